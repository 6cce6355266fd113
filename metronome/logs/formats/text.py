"""The text formats of NGINX, Apache (and NCSA-style servers), AWS, HAProxy and Traefik,
each written as an NGINX ``log_format`` string and compiled by
:func:`metronome.logs.parse.compile_log_format` into one regex.

Beyond NGINX's own variables, these strings use a few of Metronome's (see
``_TYPED`` in :mod:`metronome.logs.parse`): ``$time_nooffset`` (HAProxy's
``06/Feb/2009:12:14:14.655``, read in ``--tz``), durations in other units
(``$request_time_ms``, ``$request_time_us``, ``$request_time_msunit``, ``$elb_times``,
``$haproxy_times``), ``$syslog`` (an optional syslog prefix), ``$haproxy_captures`` and
``$rest`` (further fields, ignored). Unknown variables match one token or one quoted
string and are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TEXT_FORMATS", "TextFormat"]


@dataclass(frozen=True, slots=True)
class TextFormat:
    """A named text format: its family (detection tries a line's family first), the
    ``log_format`` string and one line of help."""

    name: str
    family: str
    log_format: str
    help: str


_NCSA = '$remote_ident $remote_user [$time_local] "$request" $status $body_bytes_sent'
_REFERRER_AGENT = ' "$http_referer" "$http_user_agent"'
COMMON = f"$remote_addr {_NCSA}"
COMBINED = COMMON + _REFERRER_AGENT
VHOST_COMMON = f"$host $remote_addr {_NCSA}"
VHOST_COMBINED = VHOST_COMMON + _REFERRER_AGENT
MAIN = COMBINED + ' "$http_x_forwarded_for"'

# Detection scores every format on a file's first lines; among formats matching as many
# lines, the first listed here wins, so the more specific ones come first.
TEXT_FORMATS: tuple[TextFormat, ...] = (
    TextFormat(
        "nginx_upstream_time",
        "ncsa",
        COMBINED + ' rt=$request_time uct="$upstream_connect_time"'
        ' uht="$upstream_header_time" urt="$upstream_response_time"',
        "NGINX's documented `upstream_time` format (combined, rt= uct= uht= urt=)",
    ),
    TextFormat(
        "main_timing",
        "ncsa",
        MAIN + " $request_time_frac$rest",
        "NGINX main plus $request_time (seconds.ms) and anything after it",
    ),
    TextFormat("main", "ncsa", MAIN, 'NGINX\'s default: combined + "$http_x_forwarded_for"'),
    TextFormat(
        "vhost_main", "ncsa", f"$host {MAIN}", "NGINX main with a leading $host or host:port"
    ),
    TextFormat(
        "icecast2",
        "ncsa",
        COMBINED + " $request_time_s",
        "Icecast2 (and SHOUTcast's text log): combined plus the seconds a listener stayed",
    ),
    TextFormat(
        "combined_timing",
        "ncsa",
        COMBINED + " $request_time_frac$rest",
        "combined plus NGINX's $request_time (seconds with a fraction) and more fields",
    ),
    TextFormat(
        "gandi",
        "ncsa",
        VHOST_COMBINED + " ($request_time s)",
        "Gandi's hosting: vhost_combined plus the time taken as `(0 s)`",
    ),
    TextFormat(
        "traefik_clf",
        "ncsa",
        COMBINED + ' $traefik_requests "$traefik_router" "$traefik_server" $request_time_msunit',
        "Traefik's common log format: combined, requests, router, server, duration in ms",
    ),
    TextFormat("combined", "ncsa", COMBINED, "Apache's and NGINX's combined (NCSA extended)"),
    TextFormat("common", "ncsa", COMMON, "Apache's common (NCSA): no referrer or user agent"),
    TextFormat(
        "vhost_combined",
        "ncsa",
        VHOST_COMBINED,
        "combined with a leading virtual host (%v, %v:%p, $host, host:port); OVH's logs",
    ),
    TextFormat("vhost_common", "ncsa", VHOST_COMMON, "common with a leading virtual host"),
    TextFormat(
        "combined_extra",
        "ncsa",
        COMBINED + "$rest",
        "combined plus further fields (%D, %T, %I %O, cookies), which are ignored",
    ),
    TextFormat(
        "vhost_combined_extra",
        "ncsa",
        VHOST_COMBINED + "$rest",
        "vhost_combined plus further fields, which are ignored",
    ),
    TextFormat(
        "apache_ssl",
        "ncsa",
        '[$time_local] $remote_addr $ssl_protocol $ssl_cipher "$request" $body_bytes_sent',
        "Apache mod_ssl's ssl_request_log (no status)",
    ),
    TextFormat(
        "elb",
        "aws",
        "$time_iso8601 $elb $remote_addr $backend $elb_times $status $backend_status"
        ' $received_bytes $body_bytes_sent "$request" "$http_user_agent" $ssl_cipher'
        " $ssl_protocol",
        "AWS classic Elastic Load Balancer (HTTP listeners)",
    ),
    TextFormat(
        "alb",
        "aws",
        "$type $time_iso8601 $elb $remote_addr $backend $elb_times $status $backend_status"
        ' $received_bytes $body_bytes_sent "$request" "$http_user_agent" $ssl_cipher'
        " $ssl_protocol$rest",
        "AWS Application Load Balancer",
    ),
    TextFormat(
        "s3",
        "aws",
        "$bucket_owner $bucket [$time_local] $remote_addr $requester $request_id $operation"
        ' $key "$request" $status $error_code $body_bytes_sent $object_size $request_time_ms'
        ' $turnaround_time "$http_referer" "$http_user_agent"$rest',
        "Amazon S3 server access logs",
    ),
    TextFormat(
        "haproxy_http",
        "haproxy",
        "$syslog$remote_addr [$time_nooffset] $frontend $backend $haproxy_times $status"
        " $body_bytes_sent $request_cookie $response_cookie $termination_state"
        ' $connections $queues$haproxy_captures "$request"',
        "HAProxy's HTTP log (option httplog), with or without the syslog prefix",
    ),
)
