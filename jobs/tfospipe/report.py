"""Human-readable output of the validation gate: a confusion-matrix PNG and a Markdown report.

Both show the candidate and the serving model (when there is one) side by side; the report also says
which promotion rule decided (policy, data dates, the serving models compared with) and which gate rule
(``gate``: threshold or significance), with the paired statistics: discordant counts, p-values, the
Wilson intervals of both accuracies and the paired interval of their difference, per class too.
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
        if str(promo["rule"]).startswith("undecided: hold"):
            verdict["held"] = "held back by the gate (too few discordant records to decide)"
        lines += [f"Promotion policy `{promo['policy']}`: **{verdict.get(promo['decision'], promo['decision'])}** — "
                  f"{promo['rule']}.",
                  "",
                  f"Data date {promo['data_date']}; serving model "
                  f"{'`%s`' % promo['serving_model'] if promo['serving_model'] else 'none'}"
                  f"{' (data date %s)' % promo['serving_data_date'] if promo.get('serving_data_date') else ''}; "
                  f"evaluation round {promo['round']}, compared with: "
                  + ", ".join(f"`{c}`" if c else "nothing serving" for c in promo["compared_with"]) + ".",
                  ""]
    g = report.get("gate") or {}
    if t.get("gate", "threshold") == "significance":
        extra = (f" with require_improvement, significantly better;" if t.get("require_improvement") else "")
        lines += [f"Rules (gate `significance`, alpha {t['alpha']}): accuracy ≥ {t['min_accuracy']}; against the "
                  "serving model: not significantly worse (exact McNemar, one-sided), no class's recall "
                  f"significantly lower (Holm), no class lost;{extra} too few discordant records to decide: "
                  f"`undecided={t['undecided']}`; outputs are finite probabilities summing to 1.", ""]
    else:
        lines += [f"Rules: accuracy ≥ {t['min_accuracy']}; accuracy ≥ serving model's − {t['max_regression']}; "
                  "outputs are finite probabilities summing to 1.", ""]
    if g.get("decided_by"):
        lines += [f"Gate rule that decided: {g['decided_by']}.", ""]
    lines += [f"- {w}" for w in g.get("warnings") or []] + ([""] if g.get("warnings") else [])
    head = "| | candidate |" + (f" serving model `{report['champion_model_version']}` |" if champ else "")
    lines += [head, "|---|---|" + ("---|" if champ else "")]
    for key in ("accuracy", "loss", "examples", "bad_outputs"):
        row = f"| {key} | {_fmt(cand[key])} |" + (f" {_fmt(champ[key])} |" if champ else "")
        lines.append(row)
    stats = g.get("statistics")
    if stats:
        lines += _paired_lines(stats)
    if stats:
        lines += ["", "Per class (candidate; discordant records and the one-sided McNemar p-value that the serving "
                  "model is better, Holm-adjusted over the classes):", "",
                  "| class | precision | recall | F1 | support | serving recall | candidate only | serving only "
                  "| p (Holm) | lost |", "|---|---|---|---|---|---|---|---|---|---|"]
        for c, m in cand["per_class"].items():
            p = stats["per_class"][c]
            lines.append(f"| {c} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} | "
                         f"{p['serving_recall']:.4f} | {p['cand_only']} | {p['serving_only']} | {p['p_holm']:.3g} | "
                         f"{'**lost**' if p['lost'] else ''} |")
    else:
        lines += ["", "Per class (candidate):", "", "| class | precision | recall | F1 | support |",
                  "|---|---|---|---|---|"]
        for c, m in cand["per_class"].items():
            lines.append(f"| {c} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |")
    lines += ["", "![confusion matrices](confusion_matrix.png)", ""]
    return "\n".join(lines)


def _interval(pair):
    return f"[{pair[0]:.4f}, {pair[1]:.4f}]"


def _paired_lines(stats):
    """The paired comparison's table rows (``significance.compare``)."""
    return ["", "Paired comparison on the same records (95% intervals):", "",
            "| | value |", "|---|---|",
            f"| records only the candidate gets right (b) | {stats['cand_only']} |",
            f"| records only the serving model gets right (c) | {stats['serving_only']} |",
            f"| p, serving model better (one-sided exact McNemar) | {stats['p_serving_better']:.4g} |",
            f"| p, candidate better (one-sided) | {stats['p_candidate_better']:.4g} |",
            f"| p, two-sided | {stats['p_two_sided']:.4g} |",
            f"| enough discordant records to decide | {'yes' if stats['decidable'] else 'no'} |",
            f"| candidate accuracy, Wilson interval | {_interval(stats['accuracy_interval'])} |",
            f"| serving accuracy, Wilson interval | {_interval(stats['serving_accuracy_interval'])} |",
            f"| accuracy difference, Newcombe paired interval | {stats['difference']:+.4f} "
            f"{_interval(stats['difference_interval'])} |"]


def _verdict(report):
    promo = report.get("promotion") or {}
    if not report["passed"]:
        return "REJECTED — serving unchanged"
    if promo.get("decision", "promote") == "promote":
        return "PASSED — promoted to serving"
    if promo["decision"] == "held" and str(promo.get("rule", "")).startswith("undecided: hold"):
        return "PASSED — not promoted (too few discordant records to decide: undecided=hold), serving unchanged"
    if promo["decision"] == "held":
        return "PASSED — not promoted (promotion policy), serving unchanged"
    return "PASSED — not promoted (serving kept changing), serving unchanged"


def _fmt(v):
    return f"{v:.4f}" if isinstance(v, float) else str(v)
