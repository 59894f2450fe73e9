"""The HTML report of a run: ``build_report(run_dir)`` writes ``run_dir/report.html``.

:mod:`~fade_cli.report.runs` reads the run folder, :mod:`~fade_cli.report.build`
makes missing thumbnails and the page's data, :mod:`~fade_cli.report.page` puts
the page together from ``static/`` (HTML, CSS and JavaScript, all inline in the
result: the report opens offline from file://).
"""
from fade_cli.report.build import REPORT_FILE, build_report

__all__ = ["REPORT_FILE", "build_report"]
