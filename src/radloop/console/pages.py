"""The console's pages as HTML, rendered on the server from read models (every value escaped).

Each page is a header with the navigation, an optional tool bar (filters; not replaced while
you type) and a ``<main id=live>`` part that ``console.js`` refreshes by polling the same URL
with ``X-Console-Live: 1`` and ``If-None-Match`` (the server answers 304 when nothing changed).
Charts and the operator graph are inline SVG; buttons carry ``data-action`` (a console action
URL) and ``console.js`` posts them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from html import escape
from urllib.parse import urlencode

from radloop.core.read_models import (
    DeliveryPage,
    DestinationStatusOut,
    JobDetail,
    JobOut,
    JobPage,
    ModelOut,
    OverviewOut,
    PipelineFileOut,
    PullOut,
    SourceOut,
    StudyDetail,
    StudyPage,
)

NAV = (
    ("/console/", "Overview"),
    ("/console/studies", "Studies"),
    ("/console/jobs", "Jobs"),
    ("/console/deliveries", "Deliveries"),
    ("/console/sources", "Pull sources"),
    ("/console/pipelines", "Pipelines"),
    ("/console/models", "Models"),
)
_COLOURS = {
    "instances": "#7cc4ff",
    "series_completed": "#9be37d",
    "jobs_succeeded": "#c89bff",
    "jobs_failed": "#ff7c9c",
    "deliveries_sent": "#ffb347",
}


def e(value: object) -> str:
    """Escaped text of ``value`` ('' for None)."""
    return "" if value is None else escape(str(value))


def _when(value: datetime | None) -> str:
    return (
        ""
        if value is None
        else f"<time datetime='{e(value.isoformat())}'>{e(value.strftime('%Y-%m-%d %H:%M:%S'))}</time>"
    )


def page(title: str, user: str, active: str, live: str, tools: str = "") -> str:
    """A whole console page around its live part."""
    nav = "".join(
        f"<a href='{href}'{' class=active' if href == active else ''}>{e(text)}</a>" for href, text in NAV
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{e(title)} · radloop console</title>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        "<link rel=stylesheet href='/console/static/console.css'>"
        "<script src='/console/static/console.js' defer></script></head><body>"
        f"<header><strong>radloop</strong><nav>{nav}</nav><span class=user>{e(user)} "
        "<button data-action='/console/logout' data-then='/console/login'>sign out</button></span></header>"
        f"<h1>{e(title)}</h1>{tools}<div id=flash role=status></div>"
        f"<main id=live>{live}</main></body></html>"
    )


def message_page(title: str, message: str) -> str:
    """A page that says why something cannot be shown."""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{e(title)} · radloop console</title>"
        "<link rel=stylesheet href='/console/static/console.css'></head><body>"
        f"<div class=box><h1>{e(title)}</h1><p>{e(message)}</p>"
        "<p><a href='/console/login'>Sign in</a></p></div></body></html>"
    )


def login_page(next_url: str, error: str, sso: bool) -> str:
    """The sign-in form: an API token, or single sign-on when it is configured."""
    sso_link = (
        "<p><a class=button href='/auth/login?next=/review/to-console'>Sign in with single sign-on</a></p>"
        if sso
        else ""
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Sign in · radloop console</title>"
        "<link rel=stylesheet href='/console/static/console.css'></head><body><div class=box>"
        "<h1>radloop console</h1>"
        + (f"<p class=error>{e(error)}</p>" if error else "")
        + sso_link
        + "<form method=post action='/console/login'>"
        f"<input type=hidden name=next value='{e(next_url)}'>"
        "<label>API token <input name=token type=password autocomplete=off required></label> "
        "<button type=submit>Sign in</button></form>"
        "<p class=muted>An admin makes a token for you: <code>radloop tokens create NAME --role operator"
        "</code>"
        " (viewer: read only).</p></div></body></html>"
    )


def _table(head: Sequence[str], rows: Iterable[str], empty: str, cls: str = "") -> str:
    body = "".join(rows) or f"<tr><td colspan={len(head)} class=muted>{e(empty)}</td></tr>"
    ths = "".join(f"<th>{e(h)}</th>" for h in head)
    return f"<table class='{cls}'><thead><tr>{ths}</tr></thead><tbody>{body}</tbody></table>"


def _state(state: object) -> str:
    value = getattr(state, "value", state)
    return f"<span class='state {e(value)}'>{e(value)}</span>"


def _button(label: str, action: str, confirm: str = "") -> str:
    extra = f" data-confirm='{e(confirm)}'" if confirm else ""
    return f"<button data-action='{e(action)}'{extra}>{e(label)}</button>"


def _pager(base: str, params: dict[str, str], offset: int, limit: int, total: int) -> str:
    """Previous / next links and "a–b of n" for a server-side page."""
    shown_to = min(offset + limit, total)
    parts = [f"<span class=muted>{offset + 1 if total else 0}–{shown_to} of {total}</span>"]
    keep = {k: v for k, v in params.items() if v}
    if offset > 0:
        parts.insert(
            0, f"<a href='{base}?{e(urlencode({**keep, 'offset': max(0, offset - limit)}))}'>‹ newer</a>"
        )
    if offset + limit < total:
        parts.append(f"<a href='{base}?{e(urlencode({**keep, 'offset': offset + limit}))}'>older ›</a>")
    return f"<p class=pager>{' '.join(parts)}</p>"


# --------------------------------------------------------------------------- overview


def overview_live(o: OverviewOut) -> str:
    """Alerts, counters, charts and destinations of the overview."""
    alerts = "".join(
        f"<div class='alert {e(a.kind)}' data-kind='{e(a.kind)}'><a href='{e(a.link)}'>{e(a.message)}</a>"
        "</div>"
        for a in o.alerts
    )
    banner = f"<section class=alerts aria-label='needs a person'>{alerts}</section>" if alerts else ""
    jobs = o.jobs_by_state
    counters = [
        ("instances received", o.instances_received, "instances_received"),
        ("series completed", o.series_completed, "series_completed"),
        ("jobs queued", jobs.get("queued", 0), "jobs_queued"),
        ("jobs running", jobs.get("running", 0), "jobs_running"),
        ("jobs succeeded", o.jobs_finished.get("succeeded", 0), "jobs_succeeded"),
        ("jobs failed", o.jobs_finished.get("failed", 0), "jobs_failed"),
        ("deliveries pending", o.deliveries_by_state.get("pending", 0), "deliveries_pending"),
        ("deliveries failed", o.deliveries_by_state.get("failed", 0), "deliveries_failed"),
    ]
    cards = "".join(
        f"<div class=counter data-counter='{key}'><b>{value}</b><span>{e(label)}</span></div>"
        for label, value, key in counters
    )
    charts = "".join(
        f"<figure><figcaption>{e(label)}</figcaption>{_bars(o, key)}</figure>"
        for key, label in (
            ("instances", "instances received"),
            ("series_completed", "series completed"),
            ("jobs_succeeded", "jobs succeeded"),
            ("jobs_failed", "jobs failed"),
            ("deliveries_sent", "deliveries sent"),
        )
    )
    return (
        f"{banner}<p class=muted>last {e(o.window)}, since {_when(o.since)} UTC · totals of jobs and "
        f"deliveries: {e(', '.join(f'{k} {v}' for k, v in jobs.items()))}</p>"
        f"<section class=counters>{cards}</section><section class=charts>{charts}</section>"
        f"<h2>Destinations</h2>{destinations_table(o.destinations)}"
    )


def _bars(o: OverviewOut, key: str, width: int = 300, height: int = 110) -> str:
    values = [int(getattr(b, key)) for b in o.buckets]
    top = max(values) or 1
    n = len(values)
    w = (width - 30) / n
    fmt = "%H:%M" if o.window == "hour" else "%H h"
    bars = "".join(
        f"<rect x='{30 + i * w:.1f}' y='{height - 18 - (v / top) * (height - 30):.1f}' "
        f"width='{max(w - 2, 1):.1f}' height='{(v / top) * (height - 30):.1f}' fill='{_COLOURS[key]}'>"
        f"<title>{e(b.start.strftime(fmt))}: {v}</title></rect>"
        for i, (v, b) in enumerate(zip(values, o.buckets, strict=True))
    )
    ticks = "".join(
        f"<text x='{30 + i * w:.1f}' y='{height - 4}' class=tick>{e(b.start.strftime(fmt))}</text>"
        for i, b in enumerate(o.buckets)
        if i % max(1, n // 4) == 0
    )
    return (
        f"<svg role=img aria-label='{e(key)} per bucket' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}'><text x='0' y='12' class=tick>{top}</text>"
        f"<line x1='30' x2='{width}' y1='{height - 18}' y2='{height - 18}' stroke='#444'/>{bars}{ticks}</svg>"
    )


def destinations_table(rows: Sequence[DestinationStatusOut]) -> str:
    """Each destination: up or down (with the last error), pending, failed and sent deliveries."""
    return _table(
        ["destination", "kind", "status", "pending", "failed", "sent", "last error"],
        (
            f"<tr data-destination='{e(d.name)}' data-down='{int(d.down)}'><td>"
            f"<a href='/console/deliveries?destination={e(d.name)}'>{e(d.name)}</a></td><td>{e(d.kind)}</td>"
            f"<td>{_state('down' if d.down else 'up')}</td><td>{d.pending}</td><td>{d.failed}</td>"
            f"<td>{d.sent}</td><td class=error>{e(d.last_error)}</td></tr>"
            for d in rows
        ),
        "No destinations configured.",
    )


# --------------------------------------------------------------------------- studies


def studies_tools(params: dict[str, str]) -> str:
    """The study search form."""
    fields = (
        ("patient", "patient name or ID"),
        ("accession", "accession"),
        ("date_from", "date from (YYYYMMDD)"),
        ("date_to", "date to"),
        ("modality", "modality"),
        ("ae", "AE title"),
    )
    inputs = "".join(
        f"<input name={k} placeholder='{e(label)}' value='{e(params.get(k, ''))}' aria-label='{e(label)}'>"
        for k, label in fields
    )
    return f"<form class=tools method=get action='/console/studies'>{inputs}<button>Search</button></form>"


def studies_live(found: StudyPage, params: dict[str, str]) -> str:
    """One page of studies, each with its series and their routing outcome."""
    rows = []
    for st in found.items:
        series = "<br>".join(
            f"{e(se.modality)} {e(se.series_description)} · {se.instance_count} inst · "
            f"{e(se.called_ae)} · {_state(se.routing_status)}"
            + (f" <span class=note>{e(se.routing_note)}</span>" if se.routing_note else "")
            for se in st.series
        )
        rows.append(
            f"<tr><td><a href='/console/studies/{e(st.study_instance_uid)}'>"
            f"{e(st.patient_name) or '(no name)'}</a>"
            f"</td><td>{e(st.patient_id)}</td><td>{e(st.accession_number)}</td><td>{e(st.study_date)}</td>"
            f"<td>{series}</td><td>{_when(st.created_at)}</td></tr>"
        )
    table = _table(
        ["patient", "patient ID", "accession", "date", "series (routing)", "received"],
        rows,
        "No study matches.",
        "studies",
    )
    return _pager("/console/studies", params, found.offset, found.limit, found.total) + table


def study_live(st: StudyDetail) -> str:
    """A study's series with their routing outcome and reason, and the jobs run on them."""
    series = _table(
        ["series", "modality", "instances", "called AE", "calling AE", "state", "routing", "reason"],
        (
            f"<tr><td>{e(se.series_description)}<br><small class=muted>{e(se.series_instance_uid)}</small>"
            "</td>"
            f"<td>{e(se.modality)}</td><td>{se.instance_count}</td><td>{e(se.called_ae)}</td>"
            f"<td>{e(se.calling_ae)}</td><td>{_state(se.state)}</td><td>{_state(se.routing_status)}</td>"
            f"<td class=note>{e(se.routing_note)}</td></tr>"
            for se in st.series
        ),
        "No series.",
    )
    return (
        f"<p>{e(st.patient_name)} · {e(st.patient_id)} · accession {e(st.accession_number)} · "
        f"{e(st.study_date)} · {e(st.study_description)}</p><h2>Series</h2>{series}"
        f"<h2>Jobs</h2>{jobs_table(st.jobs)}"
    )


# --------------------------------------------------------------------------- jobs


def jobs_tools(params: dict[str, str], pipelines: Sequence[str]) -> str:
    """Filters of the job queue."""

    def select(name: str, options: Sequence[str]) -> str:
        opts = "".join(
            f"<option value='{e(o)}'{' selected' if params.get(name) == o else ''}>{e(o or 'any ' + name)}"
            "</option>"
            for o in ["", *options]
        )
        return f"<select name={name} aria-label={name}>{opts}</select>"

    return (
        "<form class=tools method=get action='/console/jobs'>"
        + select("state", ["queued", "running", "succeeded", "failed", "cancelled"])
        + select("pipeline", list(pipelines))
        + select("priority", ["stat", "high", "normal", "low"])
        + "<button>Filter</button></form>"
    )


def jobs_table(jobs: Sequence[JobOut], actions: bool = True) -> str:
    """Jobs with their state, attempts and error, and retry / cancel buttons."""

    def buttons(j: JobOut) -> str:
        if not actions:
            return ""
        out = ""
        if j.state.value in ("queued", "running"):
            out += _button("cancel", f"/console/api/jobs/{j.id}/cancel", f"Cancel job {j.id}?")
        else:
            out += _button("retry", f"/console/api/jobs/{j.id}/retry")
        return out

    return _table(
        ["job", "pipeline", "state", "priority", "attempts", "created", "error", ""],
        (
            f"<tr data-job='{j.id}' data-state='{e(j.state.value)}'><td>"
            f"<a href='/console/jobs/{j.id}'>#{j.id}</a></td>"
            f"<td>{e(j.pipeline)} {e(j.pipeline_version)}</td><td>{_state(j.state)}</td>"
            f"<td>{e(j.priority.value)}</td><td>{j.attempts}/{j.max_attempts}</td><td>{_when(j.created_at)}"
            "</td>"
            f"<td class=error>{e(j.error)}</td><td>{buttons(j)}</td></tr>"
            for j in jobs
        ),
        "No jobs.",
        "jobs",
    )


def jobs_live(found: JobPage, params: dict[str, str]) -> str:
    """One page of the job queue."""
    return _pager("/console/jobs", params, found.offset, found.limit, found.total) + jobs_table(found.items)


def job_live(job: JobDetail, review_results: set[int]) -> str:
    """A job: state and error, its operators as a timeline per attempt, logs, and results."""
    head = (
        f"<p data-job='{job.id}' data-state='{e(job.state.value)}'>{_state(job.state)} · pipeline "
        f"{e(job.pipeline)} {e(job.pipeline_version)} · attempt {job.attempts} of {job.max_attempts} · "
        f"priority {e(job.priority.value)} · series "
        f"<a href='/console/studies/{e(job.study_instance_uid)}'>{e(job.series_instance_uid)}</a></p>"
    )
    if job.state.value in ("queued", "running"):
        head += _button("cancel", f"/console/api/jobs/{job.id}/cancel", f"Cancel job {job.id}?")
    else:
        head += _button("retry", f"/console/api/jobs/{job.id}/retry")
    if job.error:
        head += f"<pre class='error reason'>{e(job.error)}</pre>"
    attempts = sorted({s.attempt for s in job.steps}, reverse=True)
    timelines = "".join(_timeline(job, a) for a in attempts) or "<p class=muted>No operator has run yet.</p>"
    results = _table(
        ["kind", "series", "SOP instance", ""],
        (
            f"<tr data-result='{r.id}' data-kind='{e(r.kind)}'><td>{e(r.kind)}</td>"
            f"<td>{e(r.series_instance_uid)}</td>"
            f"<td>{e(r.sop_instance_uid)}</td><td>"
            + (
                f"<a class=review href='/console/review/{r.id}' data-review-app='/review/app/?result={r.id}'>"
                "open in the review app</a>"
                if r.id in review_results
                else ""
            )
            + "</td></tr>"
            for r in job.results
        ),
        "No results yet.",
    )
    logs = "".join(
        f"<details><summary>attempt {s.attempt} · {e(s.operator_id)} ({e(s.operator)}) · {e(s.state)}"
        "</summary>"
        f"<pre>{e(s.log.rstrip())}{chr(10) + e(s.error) if s.error else ''}</pre></details>"
        for s in job.steps
    )
    logs = logs or "<p class=muted>No logs.</p>"
    return f"{head}<h2>Timeline</h2>{timelines}<h2>Results</h2>{results}<h2>Logs</h2>{logs}"


def _timeline(job: JobDetail, attempt: int) -> str:
    """One attempt's operators as bars on a common time axis, each with its duration."""
    steps = [s for s in job.steps if s.attempt == attempt]
    t0 = min(s.started_at for s in steps)
    ends = [(s.started_at - t0).total_seconds() + (s.duration_s or 0.0) for s in steps]
    span = max([*ends, 0.001])
    rows = []
    for s in steps:
        offset = (s.started_at - t0).total_seconds()
        duration = s.duration_s
        left, width = 100 * offset / span, 100 * (duration or 0.0) / span
        shown = "running" if duration is None else f"{duration:.2f} s"
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in s.stages.items())
        rows.append(
            f"<div class=step data-operator='{e(s.operator_id)}' "
            f"data-duration-s='{'' if duration is None else repr(duration)}'>"
            f"<span class=label>{e(s.operator_id)} <small class=muted>{e(s.operator)}</small></span>"
            "<span class=track>"
            f"<span class='bar {e(s.state)}' style='left:{left:.2f}%;width:{max(width, 0.5):.2f}%'"
            f" title='{e(stages)}'></span></span><span class=duration>{e(shown)}</span></div>"
        )
    return (
        f"<section class=timeline data-attempt='{attempt}'><h3>attempt {attempt}</h3>"
        f"{''.join(rows)}</section>"
    )


# --------------------------------------------------------------------------- deliveries and sources


def deliveries_tools(params: dict[str, str], destinations: Sequence[str]) -> str:
    """Filters of the outbox."""
    states = "".join(
        f"<option value='{s}'{' selected' if params.get('state') == s else ''}>{s or 'any state'}</option>"
        for s in ("", "pending", "sent", "failed", "dismissed")
    )
    dests = "".join(
        f"<option value='{e(d)}'{' selected' if params.get('destination') == d else ''}>"
        f"{e(d or 'any destination')}</option>"
        for d in ["", *destinations]
    )
    return (
        "<form class=tools method=get action='/console/deliveries'>"
        f"<select name=state aria-label=state>{states}</select>"
        f"<select name=destination aria-label=destination>{dests}</select><button>Filter</button></form>"
    )


def deliveries_live(
    destinations: Sequence[DestinationStatusOut], found: DeliveryPage, params: dict[str, str]
) -> str:
    """Destinations, then one page of outbox rows with retry and dismiss."""

    def buttons(state: str, delivery_id: int) -> str:
        if state == "sent":
            return ""
        out = _button("retry", f"/console/api/deliveries/{delivery_id}/retry")
        if state != "dismissed":
            out += _button("dismiss", f"/console/api/deliveries/{delivery_id}/dismiss", "Stop retrying?")
        return out

    rows = (
        f"<tr data-delivery='{d.id}' data-state='{e(d.state.value)}'><td>{d.id}</td><td>{e(d.destination)}"
        "</td>"
        f"<td>{e(d.kind)}</td><td><a href='/console/jobs/{d.job_id}'>#{d.job_id}</a></td>"
        f"<td>{_state(d.state)}</td><td>{d.attempts}</td><td>{_when(d.next_attempt_at)}</td>"
        f"<td class=error>{e(d.last_error)}</td><td>{buttons(d.state.value, d.id)}</td></tr>"
        for d in found.items
    )
    table = _table(
        ["id", "destination", "kind", "job", "state", "attempts", "next attempt", "last error", ""],
        rows,
        "No deliveries.",
        "deliveries",
    )
    pager = _pager("/console/deliveries", params, found.offset, found.limit, found.total)
    return f"{destinations_table(destinations)}<h2>Deliveries</h2>{pager}{table}"


def sources_live(sources: Sequence[SourceOut], pulls: Sequence[PullOut]) -> str:
    """Pull sources with their last poll and "poll now"; the studies pulled lately."""
    src = _table(
        [
            "source",
            "kind",
            "address",
            "listener",
            "polling",
            "polls",
            "last poll",
            "last success",
            "last error",
            "",
        ],
        (
            f"<tr data-source='{e(s.name)}'><td>{e(s.name)}</td><td>{e(s.kind)}</td><td>{e(s.address)}</td>"
            f"<td>{e(s.listener_ae_title)}</td>"
            f"<td>{'every ' + str(s.poll.interval_s) + ' s' if s.poll.enabled else 'off'}</td>"
            f"<td>{s.cursor.polls if s.cursor else 0}</td>"
            f"<td>{_when(s.cursor.last_poll_at) if s.cursor else ''}</td>"
            f"<td>{_when(s.cursor.last_success_at) if s.cursor else ''}</td>"
            f"<td class=error>{e(s.cursor.last_error) if s.cursor else ''}</td>"
            f"<td>{_button('poll now', f'/console/api/sources/{s.name}/poll')}</td></tr>"
            for s in sources
        ),
        "No pull sources configured.",
    )
    pulled = _table(
        ["source", "study", "accession", "date", "trigger", "state", "instances", "error"],
        (
            f"<tr><td>{e(p.source)}</td><td><a href='/console/studies/{e(p.study_instance_uid)}'>"
            f"{e(p.study_instance_uid)}</a></td><td>{e(p.accession_number)}</td><td>{e(p.study_date)}</td>"
            f"<td>{e(p.trigger)}</td><td>{_state(p.state)}</td><td>{p.instances}</td>"
            f"<td class=error>{e(p.error)}</td></tr>"
            for p in pulls
        ),
        "Nothing pulled yet.",
    )
    return f"{src}<h2>Pulled lately</h2>{pulled}"


# --------------------------------------------------------------------------- pipelines and models


def pipelines_live(files: Sequence[PipelineFileOut]) -> str:
    """Each pipeline file: valid (with its operator graph) or its error with file, line and field."""
    out = []
    for f in files:
        if f.valid:
            status = f"<span class='state succeeded'>valid</span> {e(f.name)} {e(f.version)}"
            status += (
                ""
                if f.loaded
                else " <span class=muted>(changed since start: restart to run this version)</span>"
            )
            body = graph_svg(f)
        else:
            status = (
                f"<span class='state failed'>invalid</span> <span class=validation data-line='{e(f.line)}' "
                f"data-field='{e(f.field)}'>{e(f.file)}:{e(f.line)}: {e(f.field)}: {e(f.error)}</span>"
            )
            body = ""
        out.append(
            f"<section class=pipeline data-file='{e(f.file)}' data-valid='{int(f.valid)}'>"
            f"<h2>{e(f.name or f.file)}</h2>"
            f"<p>{status}</p><p class=muted>{e(f.file)}</p>{body}"
            f"<details><summary>YAML</summary>{_numbered(f.text, f.line)}</details></section>"
        )
    return "".join(out) or "<p class=muted>No pipeline files.</p>"


def _numbered(text: str, mark: int | None) -> str:
    lines = text.splitlines()
    return (
        "<pre class=yaml>"
        + "".join(
            f"<span{' class=marked' if i == mark else ''}><i>{i:>3}</i> {e(line)}\n</span>"
            for i, line in enumerate(lines, start=1)
        )
        + "</pre>"
    )


def graph_svg(f: PipelineFileOut) -> str:
    """The operator graph: inputs and operators in columns by depth, an arrow per wired input."""
    depth: dict[str, int] = {}
    sources: dict[str, set[str]] = {}
    for op in f.operators:  # topological order: each operator's sources come before it
        srcs = {v.split(".")[0] if not v.startswith("input.") else v for v in op.inputs.values()}
        sources[op.id] = srcs
        for s in srcs:
            if s.startswith("input."):
                depth.setdefault(s, 0)
        depth[op.id] = 1 + max((depth.get(s, 0) for s in srcs), default=0)
    columns: dict[int, list[str]] = {}
    for node, d in depth.items():
        columns.setdefault(d, []).append(node)
    bw, bh, gx, gy = 170, 34, 40, 14
    pos = {
        node: (10 + d * (bw + gx), 10 + i * (bh + gy))
        for d, nodes in columns.items()
        for i, node in enumerate(nodes)
    }
    width = 20 + (max(columns) + 1) * (bw + gx) if columns else 200
    height = 20 + max((len(n) for n in columns.values()), default=1) * (bh + gy)
    uses = {op.id: op.use for op in f.operators}
    edges = "".join(
        f"<line x1='{pos[s][0] + bw}' y1='{pos[s][1] + bh / 2}' x2='{pos[t][0]}' y2='{pos[t][1] + bh / 2}' "
        "stroke='#888' marker-end='url(#arrow)'/>"
        for t, srcs in sources.items()
        for s in srcs
        if s in pos
    )
    nodes = "".join(
        f"<g class=node data-node='{e(n)}'><rect x='{x}' y='{y}' width='{bw}' height='{bh}' rx='5'/>"
        f"<text x='{x + 6}' y='{y + 14}'>{e(n)}</text>"
        f"<text x='{x + 6}' y='{y + 28}' class=tick>{e(uses.get(n, 'input'))}</text></g>"
        for n, (x, y) in pos.items()
    )
    return (
        f"<svg class=graph role=img aria-label='operator graph' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}'><defs><marker id=arrow viewBox='0 0 10 10' refX='10' refY='5' "
        "markerWidth='6' markerHeight='6' orient='auto'>"
        f"<path d='M0,0L10,5L0,10z' fill='#888'/></marker></defs>{edges}{nodes}</svg>"
    )


def models_live(models: Sequence[ModelOut], stages: dict[tuple[str, str], str]) -> str:
    """Models with their versions, where they come from, their stage and the pipelines using them."""
    return _table(
        ["model", "version", "stage", "format", "task", "from", "used by", "description"],
        (
            f"<tr data-model='{e(m.name)}'><td>{e(m.name)}</td><td>{e(m.version)}</td>"
            f"<td>{e(stages.get((m.name, m.version), ''))}</td><td>{e(m.format)}</td><td>{e(m.task)}</td>"
            f"<td>{_state(m.location) if not m.available else e(m.location)}</td>"
            f"<td>{e(', '.join(m.used_by))}</td>"
            f"<td>{e(m.description)}</td></tr>"
            for m in models
        ),
        "No models.",
    )
