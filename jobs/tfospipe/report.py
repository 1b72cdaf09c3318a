"""Human-readable output of the validation gate: a confusion-matrix PNG and a Markdown report.

Both show the candidate and the serving model (when there is one) side by side; the report also says
which promotion rule decided (policy, data dates, the serving models compared with).
"""

import io


def confusion_png(results: dict) -> bytes:
    """PNG bytes: one confusion-matrix heat map per evaluated model (``{"candidate": summary, ...}``).

    ``results``: ``metrics.summarize`` results by model name; ``candidate`` and, when present and not
    None, ``champion`` are drawn side by side (100 dpi, about 520 x 460 pixels each)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [n for n in ("candidate", "champion") if results.get(n)]
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        cm = np.asarray(results[name]["confusion_matrix"])
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                        color="white" if v > cm.max() / 2 else "black")
        label = "candidate" if name == "candidate" else "serving model"
        ax.set_title(f"{label}: accuracy {results[name]['accuracy']:.4f}")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_xticks(range(cm.shape[1]))
        ax.set_yticks(range(cm.shape[0]))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def markdown(report: dict) -> str:
    """The gate's report as Markdown: verdict, rules, figures of both models, per-class table.

    ``report``: the content of ``metrics.json`` (validate's report: ``candidate``, ``champion``,
    ``thresholds``, ``failed_rules``, ``promotion``...); it links ``confusion_matrix.png`` beside it."""
    cand, champ = report["candidate"], report["champion"]
    lines = [
        f"# Validation of model {report['model_version']}",
        "",
        f"**{_verdict(report)}**",
        "",
        f"Dataset version `{report['dataset_version']}`, run `{report['run_id']}`. {report['champion_note']}.",
        "",
    ]
    if report["failed_rules"]:
        lines += ["Failed rules:", ""] + [f"- {r}" for r in report["failed_rules"]] + [""]
    t = report["thresholds"]
    promo = report.get("promotion")
    if promo:
        verdict = {"promote": "promote", "held": "held back by the promotion policy", "rejected": "rejected by the gate"}
        lines += [f"Promotion policy `{promo['policy']}`: **{verdict.get(promo['decision'], promo['decision'])}** — "
                  f"{promo['rule']}.",
                  "",
                  f"Data date {promo['data_date']}; serving model "
                  f"{'`%s`' % promo['serving_model'] if promo['serving_model'] else 'none'}"
                  f"{' (data date %s)' % promo['serving_data_date'] if promo.get('serving_data_date') else ''}; "
                  f"evaluation round {promo['round']}, compared with: "
                  + ", ".join(f"`{c}`" if c else "nothing serving" for c in promo["compared_with"]) + ".",
                  ""]
    lines += [f"Rules: accuracy ≥ {t['min_accuracy']}; accuracy ≥ serving model's − {t['max_regression']}; "
              "outputs are finite probabilities summing to 1.", ""]
    head = "| | candidate |" + (f" serving model `{report['champion_model_version']}` |" if champ else "")
    lines += [head, "|---|---|" + ("---|" if champ else "")]
    for key in ("accuracy", "loss", "examples", "bad_outputs"):
        row = f"| {key} | {_fmt(cand[key])} |" + (f" {_fmt(champ[key])} |" if champ else "")
        lines.append(row)
    lines += ["", "Per class (candidate):", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for c, m in cand["per_class"].items():
        lines.append(f"| {c} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |")
    lines += ["", "![confusion matrices](confusion_matrix.png)", ""]
    return "\n".join(lines)


def _verdict(report):
    promo = report.get("promotion") or {}
    if not report["passed"]:
        return "REJECTED — serving unchanged"
    if promo.get("decision", "promote") == "promote":
        return "PASSED — promoted to serving"
    if promo["decision"] == "held":
        return "PASSED — not promoted (promotion policy), serving unchanged"
    return "PASSED — not promoted (serving kept changing), serving unchanged"


def _fmt(v):
    return f"{v:.4f}" if isinstance(v, float) else str(v)
