"""Access logs: parsing their lines, mapping URLs to items, following log files, and the
S3 archive.

:mod:`metronome.logs.formats` names and recognises the formats of access logs (Apache,
NGINX, W3C, AWS, HAProxy, Caddy, Traefik; one module per family),
:mod:`metronome.logs.parse` turns one line into the raw parts of the request and then
into a Logstash-format document (pure: no I/O), :mod:`metronome.logs.addresses` finds the
client among forwarded addresses, and
:mod:`metronome.logs.rules` says which item (and which event) a URL path is about.
:mod:`metronome.logs.ingest` converts lines with both, writing rejects to a file;
:mod:`metronome.logs.follow` follows files and :mod:`metronome.logs.archive` keeps raw
lines in S3. What moves documents on (spool, store) is the pipeline's inputs
(:mod:`metronome.pipeline.log_input`, the forward-protocol input): logs/ never imports
pipeline/.
"""
