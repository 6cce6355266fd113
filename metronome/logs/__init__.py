"""Access logs: parsing their lines, mapping URLs to items, following log files, and the
S3 archive.

:mod:`metronome.logs.parse` turns one line of an NGINX/Apache or JSON access log into the
raw parts of the request and then into a Logstash-format document (pure: no I/O), and
:mod:`metronome.logs.rules` says which item (and which event) a URL path is about.
:mod:`metronome.logs.ingest` converts lines with both, writing rejects to a file;
:mod:`metronome.logs.follow` follows files and :mod:`metronome.logs.archive` keeps raw
lines in S3. What moves documents on (spool, store) is the pipeline's inputs
(:mod:`metronome.pipeline.log_input`, the forward-protocol input): logs/ never imports
pipeline/.
"""
