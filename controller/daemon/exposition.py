"""The exposition Prometheus scrapes (design section 8, P5 in section 9), byte for byte what prometheus-client
writes, fast enough for 1000 applications: the collector's per-application series are `Family` objects whose
sample lines tether formats itself, once per application while its status says the same, and the exposition
joins them under headers the library renders. Served by `wsgi_app` and written by `write_textfile`."""

from __future__ import annotations

import gzip
import logging
import operator
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import prometheus_client
import prometheus_client.core
import prometheus_client.exposition
import prometheus_client.utils

from controller import errors, fsutil

log = logging.getLogger(__name__)

Row = tuple[tuple[str, ...], float]  # label values, in the order of `Series.labels`, and the value
Encoder = Callable[[Any], bytes]
_float_text: Callable[[float], str] = prometheus_client.utils.floatToGoString  # the encoders' number format
GZIP_LEVEL = 6  # prometheus-client compresses at 9: three times the CPU (51 ms, not 17) for a body 5 % smaller
_INTS = {number: _float_text(number) for number in range(-1, 1025)}
# Label values that a format must escape, and values that test its number formatting (see `_formats_alike`).
_PROBE_VALUES = ("back\\slash", 'quo"te', "new\nline", "\u00e9t\u00e9 \u2603", "")
_PROBE_NUMBERS = (0, 1, -1, 1024, 2.5, -0.0, 1726567200.123, 12345678901.0, 1e-7, float("inf"), float("nan"))


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    """A value as prometheus-client's encoders write it (whole numbers from a table: most values are)."""
    text = _INTS.get(value) if type(value) is int else None  # not a bool, nor a float such as -0.0
    return text if text is not None else _float_text(value)


def carried(groups: Sequence[list[Row]]) -> tuple[tuple[list[Row], ...], bool, bool]:
    """`groups` of rows as an exposition can carry them: every label value that it cannot carry as it is (a
    lone surrogate, which is not UTF-8; a control character) shown as escapes instead, such as \\udcff; then
    whether their lines must escape (`Series.lines`), and whether any value was shown as escapes (to be
    logged)."""
    labels = "".join([value for rows in groups for values, _ in rows for value in values])
    if not errors.CONTROL.search(labels):
        return tuple(groups), "\\" in labels or '"' in labels, False
    shown = tuple([(tuple(map(errors.printable, values)), value) for values, value in rows] for rows in groups)
    return shown, True, True  # escapes hold backslashes, which the lines escape in turn


class Series:
    """A gauge or counter family of labelled series: what prometheus-client's GaugeMetricFamily or
    CounterMetricFamily would be, with `lines` formatting rows as the library's encoders do."""

    def __init__(self, name: str, documentation: str, type_: str, labels: Sequence[str]) -> None:
        if type_ not in ("gauge", "counter") or not labels:
            raise ValueError(f"a Series is a gauge or a counter with labels, not a {type_} with {labels!r}")
        self.name = name.removesuffix("_total") if type_ == "counter" else name  # as CounterMetricFamily does
        self.documentation, self.type, self.labels = documentation, type_, tuple(labels)
        self.sample_name = self.name + "_total" if type_ == "counter" else self.name
        order = sorted(range(len(self.labels)), key=self.labels.__getitem__)  # the encoders sort labels by name
        self._template = self.sample_name + "{" + ",".join(f'{self.labels[i]}="%s"' for i in order) + "} %s\n"
        self._order: Callable[[tuple[str, ...]], tuple[str, ...]] = \
            operator.itemgetter(*order) if len(order) > 1 else lambda values: values[:1]

    def lines(self, rows: Iterable[Row], escape: bool = True) -> str:
        """The exposition lines of `rows`, the same in the text format and in OpenMetrics; `escape=False`
        when no label value holds a backslash, a double quote or a line break (most do not)."""
        template, order, ints, other = self._template, self._order, _INTS, _float_text
        if escape:
            return "".join([template % (*map(_escaped, order(values)), _number(value)) for values, value in rows])
        if len(self.labels) == 1:
            return "".join([template % (values[0], ints[value] if value.__class__ is int and value in ints
                                        else other(value)) for values, value in rows])
        return "".join([template % (*order(values), ints[value] if value.__class__ is int and value in ints
                                    else other(value)) for values, value in rows])

    def family(self, rows: Sequence[Sequence[Row]], lines: Sequence[str]) -> Family:
        """The family of some rows (one application's, say) and their lines (`lines` of each)."""
        return Family(self, rows, lines)

    def metric(self, rows: Iterable[Row]) -> prometheus_client.core.Metric:
        """The library's own family of `rows`."""
        kind = prometheus_client.core.GaugeMetricFamily if self.type == "gauge" else \
            prometheus_client.core.CounterMetricFamily
        metric = kind(self.name, self.documentation, labels=self.labels)
        for values, value in rows:
            metric.add_metric(list(values), value)
        return metric


class Family(prometheus_client.core.Metric):
    """A family of `series` whose samples are made only when something reads them (prometheus-client's
    encoders, a test); `exposition` uses their lines instead."""

    _samples: list[prometheus_client.core.Sample] | None

    def __init__(self, series: Series, rows: Sequence[Sequence[Row]], lines: Sequence[str]) -> None:
        super().__init__(series.name, series.documentation, series.type)
        self.series, self.rows, self.lines, self._samples = series, rows, lines, None

    @property  # an attribute of Metric, read and set by the library
    def samples(self) -> list[prometheus_client.core.Sample]:
        if self._samples is None:
            self._samples = self.series.metric(row for rows in self.rows for row in rows).samples
        return self._samples

    @samples.setter
    def samples(self, value: list[prometheus_client.core.Sample]) -> None:
        self._samples = value

    def text(self) -> str:
        return "".join(self.lines)


class _Only:
    """A registry-like holder of some metrics, for an encoder to render just those."""

    def __init__(self, metrics: list[prometheus_client.core.Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[prometheus_client.core.Metric]:
        return self.metrics


def _alone(metric: prometheus_client.core.Metric, encoder: Encoder, trailer: str) -> str:
    """What `encoder` writes for `metric`, without the trailer it ends every exposition with."""
    return encoder(_Only([metric])).decode("utf-8").removesuffix(trailer)


def _formats_alike(series: Series, encoder: Encoder, trailer: str) -> tuple[bool, str]:
    """Whether `encoder` writes the lines of `series` as `Series.lines` does (checked on rows that hold
    every character a format escapes and numbers of every kind), and the family's header as it writes it."""
    header = _alone(series.metric([]), encoder, trailer)
    rows = [(tuple(_PROBE_VALUES[(i + n) % len(_PROBE_VALUES)] for n in range(len(series.labels))), number)
            for i, number in enumerate(_PROBE_NUMBERS)]
    return _alone(series.metric(rows), encoder, trailer) == header + series.lines(rows), header


def exposition(registry: prometheus_client.CollectorRegistry,
               encoder: Encoder = prometheus_client.generate_latest) -> bytes:
    """What `encoder` (a prometheus-client format, as `choose_encoder` gives it) writes for `registry`, byte
    for byte. A `Family` is written from its lines, unless this encoder writes its samples in another
    way (an escaping scheme for names, a format of a later prometheus-client): then the library renders it."""
    trailer = encoder(_Only([])).decode("utf-8")  # "# EOF\n" for OpenMetrics, nothing for the text format
    parts = []
    for metric in registry.collect():
        if isinstance(metric, Family):
            alike, header = _formats_alike(metric.series, encoder, trailer)
            parts.append(header + metric.text() if alike else _alone(metric, encoder, trailer))
        else:
            parts.append(_alone(metric, encoder, trailer))
    parts.append(trailer)
    return "".join(parts).encode("utf-8")


def wsgi_app(registry: prometheus_client.CollectorRegistry) -> Callable[..., list[bytes]]:
    """prometheus_client.make_wsgi_app(registry), answering a plain scrape through `exposition`: the same
    format negotiation (Accept), the same headers and gzip (Accept-Encoding), the same body once unzipped."""
    library = prometheus_client.make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("REQUEST_METHOD", "GET") != "GET" or environ.get("PATH_INFO") == "/favicon.ico" or \
                "name[]" in urllib.parse.parse_qs(environ.get("QUERY_STRING", "")):
            return list(library(environ, start_response))
        encoder, content_type = prometheus_client.exposition.choose_encoder(environ.get("HTTP_ACCEPT", ""))
        output = exposition(registry, encoder)
        headers = [("Content-Type", content_type)]
        if prometheus_client.exposition.gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):
            output = gzip.compress(output, GZIP_LEVEL)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [output]

    return app


def write_textfile(path: str, registry: prometheus_client.CollectorRegistry) -> None:
    """Write the exposition for node_exporter's textfile collector; readers see the old file or the new one.
    A failure is logged, never raised: the daemon goes on, and writes the file again at the next change."""
    try:
        fsutil.atomic_write(path, exposition(registry), 0o644)
    except OSError as exc:
        log.error("tether could not write the metrics textfile %s: %s; it tries again at the next change.",
                  errors.shown_path(path), exc.strerror or exc)
    except Exception:
        log.exception("tether could not make the metrics for the textfile %s; it tries again at the next change.",
                      errors.shown_path(path))
