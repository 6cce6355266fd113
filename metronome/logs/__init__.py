"""Access logs: following log files, parsing their lines, and mapping URLs to items.

Everything here except :mod:`metronome.logs.follow` is pure (no I/O):
:mod:`metronome.logs.parse` turns one line of an NGINX/Apache or JSON access log into the
raw parts of the request and then into a Logstash-format document, and
:mod:`metronome.logs.rules` says which item (and which event) a URL path is about.
"""
