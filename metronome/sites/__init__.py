"""Sites and keys: the registry (:mod:`.registry`), each process's cached copy
(:mod:`.cache`), and the model (:mod:`.model`). The HTTP side is :mod:`metronome.api.guard`;
reports are kept to a site by :func:`metronome.reports.query.for_site`.
"""
