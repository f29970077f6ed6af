"""HTML evidence reports for ``verify``, ``verify-remote``, ``dispute`` and ``attack`` (``--html FILE``).

Each page is for two readers at once: a non-specialist (the verdict first, then what was checked
and why it proves something, each p-value with its meaning in one sentence) and an expert (every
number, the plots, the hashes of every file read, the command to reproduce, the environment).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .evidence_html import (
    EvidencePage,
    bar_chart,
    environment,
    file_hashes,
    markdown_html,
    paragraph,
    png_image,
    reproduce_command,
    table,
)
from .fileio import write_text_atomic
from .verdict import format_p_value

__all__ = ["attack_page", "dispute_page", "remote_page", "verify_page", "write_page"]

WHY_WHITE_BOX = (
    "The owner's key holds secret passports. Put back into the suspect's normalization layers, they "
    "compute affine values whose signs spell the owner's signature; a model that never trained with this "
    "key matches each signature bit only by chance, one in two. The owner's model also keeps its accuracy "
    "with the passports in place, which a model that merely resembles it does not."
)
WHY_BLACK_BOX = (
    "The owner trained the model to answer a secret set of trigger inputs with labels the owner chose at "
    "random. Another model answers each trigger with the owner's label only by chance, so many such "
    "answers show the suspect learned from the owner's model. No weights are needed: the triggers are "
    "sent as ordinary queries."
)
MEANING = {
    "signature": "The probability that a model which never trained with this key matches at least this "
    "many signature bits by luck, each bit a fair coin.",
    "trigger": "The probability that a model which never learned the owner's trigger labels gives at least "
    "this many of them by luck, at the chance of one label per class.",
    "control": "The same probability for fresh inputs drawn like the triggers: it should be large, showing "
    "that the suspect does not simply favour the owner's labels on every input.",
    "forgery": "The chance that one attempt at forging a key reaches the required number of matching bits.",
}


def write_page(path: str | Path, page: str) -> None:
    write_text_atomic(path, page)


def _closing(page: EvidencePage, hashes: dict[str, Any], argv: Sequence[str] | None) -> str:
    page.section("Files read (SHA-256)", file_hashes(hashes))
    page.section("Reproduce", reproduce_command(argv))
    page.section("Environment", environment())
    return page.render()


def _p_row(name: str, value: float | None, log10: float | None) -> tuple[str, str, str]:
    return (name, format_p_value(value, log10), MEANING[name.split()[0]])


def verify_page(
    report: Any,
    model: str,
    key: str,
    certificate: str | None = None,
    argv: Sequence[str] | None = None,
) -> str:
    """The page for ``verify``: ``report`` is a VerificationReport."""
    r = report.to_dict()
    page = EvidencePage(f"Ownership verification of {model}", f"with the owner key {key}")
    page.verdict(r["verified"], "VERIFIED" if r["verified"] else "NOT VERIFIED")
    page.section(
        "What was checked, and why it proves something", paragraph(WHY_WHITE_BOX), paragraph(WHY_BLACK_BOX)
    )
    rule = [paragraph(f"Rule: {r['rule']}")]
    rule += [paragraph(f"Not met: {c}") for c in r["failed_conditions"]] if r["failed_conditions"] else []
    page.section("The verdict and its rule", *rule, "".join(paragraph(reason) for reason in r["reasons"]))
    p_rows = []
    if r["signature_bits"] is not None:
        p_rows.append(_p_row("signature", r["signature_p_value"], r["signature_log10_p_value"]))
    if r["trigger_count"]:
        p_rows.append(_p_row("trigger", r["trigger_p_value"], r["trigger_log10_p_value"]))
    if r["forgery_log10_chance"] is not None:
        chance = (
            "impossible"
            if r["forgery_log10_chance"] == float("-inf")
            else f"10^{r['forgery_log10_chance']:.1f}"
        )
        p_rows.append(("forgery chance", chance, MEANING["forgery"]))
    page.section(
        "How unlikely the evidence is by chance", table(p_rows, ("p-value", "value", "what it means"))
    )
    if r["per_layer"]:
        names, values = list(r["per_layer"]), list(r["per_layer"].values())
        page.section(
            "Signature bits per layer",
            paragraph("The share of each protected layer's bits that match the owner's signature."),
            bar_chart(
                names, values, "bit agreement per layer", "share of bits matching", {"chance": 0.5}, True
            ),
        )
    if r["passport_free_accuracy"] is not None:
        lines = {"chance": 1 / r["num_classes"]} if r["num_classes"] else {}
        if r["accuracy_floor"] is not None:
            lines["floor the rule asks for"] = r["accuracy_floor"]
        page.section(
            "Accuracy of both branches",
            paragraph(
                "Passport-free: the model as released. Passport-aware: with the owner's passports put back; "
                "only the owner's model keeps its accuracy there."
            ),
            bar_chart(
                ["passport-free", "passport-aware"],
                [r["passport_free_accuracy"], r["passport_aware_accuracy"] or 0.0],
                "test accuracy",
                "accuracy",
                lines,
            ),
        )
    if r["trigger_count"]:
        page.section("Trigger evidence", _trigger_chart(r["trigger_accuracy"], r["trigger_chance"]))
    page.section("Every number", markdown_html(report.to_markdown("Verification")))
    return _closing(page, {"suspect model": model, "owner key": key, "certificate": certificate}, argv)


def _trigger_chart(accuracy: float, chance: float, control: float | None = None) -> str:
    labels, values = ["triggers"], [accuracy]
    if control is not None:
        labels, values = labels + ["control inputs"], values + [control]
    return bar_chart(labels, values, "answers with the owner's labels", "share", {"chance": chance})


def remote_page(result: dict[str, Any], key: str, argv: Sequence[str] | None = None) -> str:
    """The page for ``verify-remote``: ``result`` is what verify_remote returned."""
    from .remote.verify_remote import remote_markdown

    report, control, endpoint = result["report"], result["control"], result["endpoint"]
    page = EvidencePage(
        f"Black-box verification of {endpoint['url']}", f"model {endpoint['model']!r}, key {key}"
    )
    page.verdict(result["verified"], "VERIFIED" if result["verified"] else "NOT VERIFIED")
    page.section(
        "What was checked, and why it proves something",
        paragraph(WHY_BLACK_BOX),
        paragraph(
            "A control of as many fresh inputs, drawn the way the triggers were, went to the same endpoint "
            "and is scored against the same owner labels: it shows the answers are tied to the triggers."
        ),
    )
    page.section(
        "The verdict and its rule",
        paragraph(f"Rule (a remote check has no weights: only its black-box part applies): {report['rule']}"),
        *map(paragraph, report["reasons"]),
    )
    rows = [
        _p_row("trigger", report["trigger_p_value"], report["trigger_log10_p_value"]),
        _p_row("control", control["p_value"], control["log10_p_value"]),
    ]
    page.section("How unlikely the evidence is by chance", table(rows, ("p-value", "value", "what it means")))
    page.section(
        "Trigger evidence",
        _trigger_chart(
            report["trigger_accuracy"], report["trigger_chance"], control["accuracy_on_owner_labels"]
        ),
    )
    page.section(
        "The queries",
        table(
            [
                ("endpoint", f"{endpoint['url']} ({endpoint['protocol']})"),
                ("inputs per request", endpoint["batch_size"]),
                ("requests sent in this run", result["requests_sent_this_run"]),
                ("evidence log", f"{result['log']['path']} (SHA-256 {result['log']['sha256']})"),
                ("transport", ", ".join(f"{k} {v}" for k, v in result["transport"].items())),
            ]
        ),
    )
    page.section("Every number", markdown_html(remote_markdown(result)))
    return _closing(page, {"owner key": key, "evidence log": result["log"]["path"]}, argv)


def dispute_page(
    result: Any, suspect: str, claims: Sequence[Sequence[str]], argv: Sequence[str] | None = None
) -> str:
    """The page for ``dispute``: ``result`` is a DisputeResult; ``claims`` (key, certificate, release)."""
    page = EvidencePage(f"Ownership dispute over {suspect}")
    winner = result.winner
    page.verdict(True if winner else None, f"Decision: {winner}" if winner else "No owner proven")
    page.section(
        "What was checked, and why it proves something",
        paragraph(
            "Each claimant's proof (hash-bound signature bits, trigger answers) is looked for in the suspect "
            "and in the other claimant's release. Certificates order the claims in time; evidence that "
            "already shows up in the earlier release cannot prove that the earlier claimant took from the "
            "later one."
        ),
        paragraph(f"Decided by: {result.decided_by}"),
        *map(paragraph, result.notes),
    )
    rows = [row for row in result.rows if row["detection"] is not None]
    if rows:
        labels = [f"{row['claimant']} in {row['model']}" for row in rows]
        page.section(
            "Signature bits each proof matches",
            paragraph(MEANING["signature"], meaning=True),
            bar_chart(
                labels,
                [row["detection"] for row in rows],
                "bit agreement",
                "share of bits",
                {"chance": 0.5},
                True,
            ),
        )
    page.section("Every number", markdown_html(result.to_markdown()))
    hashes: dict[str, Any] = {"suspect": suspect}
    for index, (key, certificate, released) in enumerate(claims, 1):
        hashes |= {
            f"claim {index} key": key,
            f"claim {index} certificate": certificate,
            f"claim {index} release": released,
        }
    return _closing(page, hashes, argv)


def attack_page(
    result: dict[str, Any], out: str | Path, model: str, key: str, argv: Sequence[str] | None = None
) -> str:
    """The page for ``attack``: ``result`` is what run_attack wrote to ``out``/result.json."""
    out = Path(out)
    page = EvidencePage(f"Attack: {result['attack']}", f"on {model}, measured with the owner key {key}")
    page.verdict(None, f"Attack '{result['attack']}' run; its evidence below")
    page.section(
        "What was done, and why it matters",
        paragraph(f"Threat model: {result.get('threat_model', '')}"),
        paragraph(
            "The attacker changes the model, or makes a rival claim, the way this threat model allows; "
            "the owner's evidence is then measured on what the attacker leaves. A protection holds when "
            "the owner still proves ownership, or when the attack costs the attacker the model's accuracy."
        ),
    )
    plots = [png_image(out / name, name) for name in result.get("plots", []) if (out / name).is_file()]
    rows = result.get("rows") or []
    if not plots and rows:
        shares = {k: v for k, v in rows[-1].items() if isinstance(v, float) and 0.0 <= v <= 1.0}
        if shares:
            plots = [bar_chart(list(shares), list(shares.values()), "after the attack", "share")]
    page.section("Plots", *plots)
    page.section("Every number", markdown_html((out / "result.md").read_text()))
    hashes = {"attacked model": model, "owner key": key, "attack result": out / "result.json"}
    return _closing(page, hashes, argv)
