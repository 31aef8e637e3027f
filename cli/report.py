"""`consentgate report CAMPAIGN`: a campaign's aggregates as a table, JSON, CSV or one HTML file.

The HTML report is self-contained: inline CSS and inline SVG charts (the funnel, and events per
day), no script, no external asset — it can be mailed or archived as one file.
"""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path

import typer
from rich.table import Table

from cli.context import fail, now, open_ledger, out_console, run, state
from ledger.store.reports import CampaignReport, campaign_report, generated_at

TIMELINE_KINDS = ("delivered", "opened", "clicked", "bounced", "unsubscribed", "complained", "suppressed")
COLOURS = {
    "accepted": "#4c6ef5",
    "delivered": "#4c6ef5",
    "opened": "#12b886",
    "clicked": "#fab005",
    "bounced": "#868e96",
    "unsubscribed": "#fa5252",
    "complained": "#be4bdb",
    "suppressed": "#495057",
}


def rows(report: CampaignReport) -> list[tuple[str, str, int]]:
    """(section, key, value) rows: the flat form of the report (table and CSV)."""
    out: list[tuple[str, str, int]] = [
        ("funnel", "accepted", report.accepted),
        ("funnel", "delivered", report.delivered),
        ("funnel", "deferred", report.deferred),
        ("funnel", "unique_opens", report.unique_opens),
        ("funnel", "unique_clicks", report.unique_clicks),
        ("funnel", "unsubscribes", report.unsubscribes),
        ("funnel", "complaints", report.complaints),
    ]
    out += [("refused", k, v) for k, v in report.refused.items()]
    out += [("bounced", k, v) for k, v in report.bounced.items()]
    out += [("clicks_per_link", k, v) for k, v in report.clicks_per_link.items()]
    out += [("countries", k, v) for k, v in report.countries.items()]
    return out


def funnel_svg(report: CampaignReport) -> str:
    """Horizontal bars, one per funnel stage."""
    stages = report.funnel()
    widest = max([v for _, v in stages] + [1])
    bar_h, gap, label_w, width = 28, 10, 110, 640
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{len(stages) * (bar_h + gap)}" '
        'role="img" aria-label="funnel">'
    ]
    for i, (name, value) in enumerate(stages):
        y = i * (bar_h + gap)
        w = max(2, int((width - label_w - 80) * value / widest)) if value else 0
        parts.append(f'<text x="0" y="{y + 19}" font-size="14">{name}</text>')
        parts.append(
            f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar_h}" fill="{COLOURS[name]}" rx="3"/>'
        )
        parts.append(f'<text x="{label_w + w + 8}" y="{y + 19}" font-size="14">{value}</text>')
    parts.append("</svg>")
    return "".join(parts)


def timeline_svg(report: CampaignReport) -> str:
    """Events per day: one polyline per kind, with axes and a legend."""
    days = list(report.timeline)
    width, height, left, bottom, top = 640, 260, 40, 40, 10
    if not days:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="40"><text x="0" y="20">no events</text></svg>'
    peak = max([max(kinds.values(), default=0) for kinds in report.timeline.values()] + [1])
    plot_w, plot_h = width - left - 70, height - bottom - top
    step = plot_w / max(len(days) - 1, 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 30}" role="img" aria-label="events over time">'
    ]
    parts.append(
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#333"/>'
    )
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>')
    parts.append(
        f'<text x="0" y="{top + 10}" font-size="11">{peak}</text><text x="0" y="{top + plot_h}" font-size="11">0</text>'
    )
    for i, day in enumerate(days):
        if len(days) <= 8 or i in (0, len(days) - 1) or i % max(len(days) // 6, 1) == 0:
            parts.append(
                f'<text x="{left + i * step - 30:.0f}" y="{top + plot_h + 16}" font-size="11">{day}</text>'
            )
    legend_x = left
    for kind in TIMELINE_KINDS:
        values = [report.timeline[d].get(kind, 0) for d in days]
        if not any(values):
            continue
        points = " ".join(
            f"{left + i * step:.1f},{top + plot_h - plot_h * v / peak:.1f}" for i, v in enumerate(values)
        )
        colour = COLOURS[kind]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
        for i, v in enumerate(values):
            parts.append(
                f'<circle cx="{left + i * step:.1f}" cy="{top + plot_h - plot_h * v / peak:.1f}" r="3" fill="{colour}"/>'
            )
        parts.append(f'<rect x="{legend_x}" y="{height + 12}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{legend_x + 14}" y="{height + 21}" font-size="12">{kind}</text>')
        legend_x += 108
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: CampaignReport, stamp: str) -> str:
    """The whole report as one self-contained HTML document."""
    title = f"Campaign {report.campaign} — {report.client}"
    table_rows = "".join(
        f"<tr><td>{html.escape(section)}</td><td>{html.escape(key)}</td><td class=n>{value}</td></tr>"
        for section, key, value in rows(report)
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2rem;color:#212529;max-width:760px}}
h1{{font-size:1.4rem}} h2{{font-size:1.1rem;margin-top:2rem}}
table{{border-collapse:collapse}} td,th{{border-bottom:1px solid #dee2e6;padding:.25rem .75rem;text-align:left}}
td.n{{text-align:right;font-variant-numeric:tabular-nums}} .muted{{color:#868e96;font-size:.85rem}}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="muted">Aggregates only — no addresses. Generated {html.escape(stamp)}.</p>
<h2>Funnel</h2>
{funnel_svg(report)}
<h2>Events per day</h2>
{timeline_svg(report)}
<h2>Figures</h2>
<table><tr><th>section</th><th>what</th><th>count</th></tr>{table_rows}</table>
</body></html>
"""


def report(
    ctx: typer.Context,
    campaign: str = typer.Argument(..., help="The campaign name (as the mailer's campaign header gave it)."),
    client: str | None = typer.Option(
        None, "--client", help="The client, when several have this campaign name."
    ),
    fmt: str = typer.Option("table", "--format", help="table, json, csv or html."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout."),
) -> None:
    """Show a campaign's aggregates: accepted, refused by reason, delivered, bounces, opens, clicks…"""
    if fmt not in ("table", "json", "csv", "html"):
        raise fail("--format must be table, json, csv or html")
    settings = state(ctx).settings()

    async def body() -> CampaignReport:
        async with open_ledger(settings) as store:
            return await campaign_report(store.db, campaign, client)

    result = run(body)
    if fmt == "table":
        table = Table(title=f"campaign {result.campaign} ({result.client})")
        for name in ("section", "what", "count"):
            table.add_column(name, justify="right" if name == "count" else "left")
        for section, key, value in rows(result):
            table.add_row(section, key, str(value))
        out_console.print(table)
        return
    if fmt == "json":
        text = json.dumps(result.as_dict(), indent=2) + "\n"
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["section", "what", "count"])
        writer.writerows(rows(result))
        text = buffer.getvalue()
    else:
        text = render_html(result, generated_at(now()))
    if output is None:
        print(text, end="")
    else:
        output.write_text(text, encoding="utf-8")
        out_console.print(f"report written to {output}")
