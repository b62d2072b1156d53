"""The evaluation report: files exist, PNGs are real images, JSON round-trips, the best value is bold."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest
from matplotlib.image import imread

from recsys.evaluation.html import REPORT_HTML
from recsys.evaluation.report import BY_GROUP_PNG, IMPORTANCE_PNG, METRICS_JSON, METRICS_PNG, REPORT, write_report

TABLE = {
    "full model": {"auc": 0.7123, "mrr": 0.3511, "ndcg@5": 0.3901, "ndcg@10": 0.4502, "impressions": 1234.0},
    "popularity": {"auc": 0.6012, "mrr": 0.3620, "ndcg@5": 0.3100, "ndcg@10": 0.3800, "impressions": 1234.0},
    "random": {"auc": 0.5, "mrr": 0.2, "ndcg@5": float("nan"), "ndcg@10": 0.25, "impressions": 1234.0},
    "oracle": {"auc": 0.9, "mrr": 0.6, "ndcg@5": 0.7, "ndcg@10": 0.75, "impressions": 1234.0},
}
IMPORTANCE = {f"feature_{i:02d}": float(1000 - 40 * i) for i in range(25)}
BY_GROUP = pl.DataFrame(
    [
        {"bucket": b, "model": m, "auc": 0.5 + 0.03 * i + (0.05 if m == "full model" else 0), "ndcg@10": 0.3 + 0.02 * i, "impressions": 100.0}
        for i, b in enumerate(["0", "1-4", "5-9", "10+"])
        for m in ("full model", "popularity")
    ]
)


def test_report_files_and_numbers(tmp_path: Path) -> None:
    path = write_report(tmp_path / "rep", title="Replay of sample (dev)", table=TABLE, importance=IMPORTANCE, by_group=BY_GROUP, notes={"split": "dev"})
    out = tmp_path / "rep"
    assert path == out / REPORT
    for png in (METRICS_PNG, IMPORTANCE_PNG, BY_GROUP_PNG):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = imread(out / png)
        assert img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0  # not a blank canvas
    saved = json.loads((out / METRICS_JSON).read_text())
    for model, row in TABLE.items():
        for metric, value in row.items():
            got = saved["metrics"][model][metric]
            assert got is None if math.isnan(value) else got == value
    assert saved["importance"] == IMPORTANCE
    assert pl.DataFrame(saved["by_group"]).select(BY_GROUP.columns).equals(BY_GROUP)
    md = path.read_text()
    assert md.startswith("# Replay of sample (dev)")
    # Best among contenders in bold: AUC of the full model, MRR of popularity; the oracle is not ranked.
    assert "| full model | **0.7123** | 0.3511 |" in md
    assert "| popularity | 0.6012 | **0.3620** |" in md
    assert "**0.9000**" not in md and "| *oracle* |" in md
    assert "| 1,234 |" in md and "**1,234**" not in md  # counts are not ranked
    assert "feature_19" in md and "feature_20" not in md  # top 20 by gain only
    assert f"]({BY_GROUP_PNG})" in md and f"]({METRICS_PNG})" in md


def test_report_minimal_and_rerun(tmp_path: Path) -> None:
    write_report(tmp_path, title="t", table={"m": {"auc": 0.6}})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([REPORT, REPORT_HTML, METRICS_JSON, METRICS_PNG])
    write_report(tmp_path, title="t2", table={"m": {"auc": 0.7}})
    assert json.loads((tmp_path / METRICS_JSON).read_text())["metrics"]["m"]["auc"] == 0.7
    with pytest.raises(ValueError, match="empty"):
        write_report(tmp_path, title="t", table={})
    with pytest.raises(ValueError, match="bucket"):
        write_report(tmp_path, title="t", table={"m": {"auc": 0.6}}, by_group=pl.DataFrame({"x": [1]}))
