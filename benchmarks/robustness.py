"""Every attack against the default protected model on mnist5k; writes docs/ROBUSTNESS.md and its plots.

    python benchmarks/robustness.py [--arch resnet18] [--dataset mnist5k] [--epochs 5] [--reuse] [--docs]

Trains the default ``passportnorm protect`` model (ResNet18 x0.25, mnist5k, seed 0; or ``--arch``)
unless ``--reuse`` finds it, then runs ``passportnorm attack`` for each attack and tabulates one
row per attack: the attacker's accuracy, the signature evidence, and the owner's verdict. Another
``--arch`` runs the transformer battery (fine-tuning x4, pruning, obfuscation, quantization,
re-protection) into its own section, ``attacks-ARCH``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
import shutil
import sys
from pathlib import Path

from _docs import DOCS, machine, update_section

from passportnorm.attacks.runner import record, run_attack
from passportnorm.pipeline import RunOptions, run_protect
from passportnorm.verify import format_p_value

PLAN = [
    ("finetune", {"mode": "ftll"}, "ftll"),
    ("finetune", {"mode": "ftal"}, "ftal"),
    ("finetune", {"mode": "rtll"}, "rtll"),
    ("finetune", {"mode": "rtal"}, "rtal"),
    ("refit", {}, "refit"),
    ("merge", {}, "merge"),
    ("transfer", {"target_dataset": "digits"}, "transfer-digits"),
    ("transfer", {"target_classes": "5,6,7,8,9"}, "transfer-classes"),
    ("prune", {}, "prune"),
    ("obfuscate", {}, "obfuscate"),
    ("eclipse", {"rates": [0.5, 1.0], "cancel": 0.0}, "eclipse"),
    ("eclipse", {"rates": [0.5], "cancel": 0.25}, "eclipse-cancel"),
    ("ambiguity1", {}, "ambiguity1"),
    ("ambiguity2", {}, "ambiguity2"),
    ("erb", {"erb_mode": "cerb", "epochs": 100}, "erb-cerb"),  # cheap per epoch (10% of the data): train it well
    ("erb", {"erb_mode": "ierb", "epochs": 100}, "erb-ierb"),
    ("forge", {}, "forge"),
]
# a transformer trains with Adam (its recipe, zoo/vit.py): REFIT and merge's partners use it, at its scale of rates
ADAM = {"refit": {"optimizer": "adam", "lrs": [0.001, 0.003, 0.01, 0.03]}, "merge": {"optimizer": "adam", "lr": 0.002}}
TRANSFORMER_PLAN = [
    (name, ADAM.get(name, options), label)
    for name, options, label in PLAN
    if name in ("finetune", "refit", "merge", "prune", "obfuscate")
] + [
    ("quantize", {}, "quantize"),
    ("reprotect", {"passports": "random", "lr": 0.01}, "reprotect"),
]


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def summarise(label: str, result: dict) -> list[tuple[str, dict | None]]:
    """Markdown rows (attacker accuracy, evidence, verdict), each with the result row it shows."""
    rows = result["rows"]
    name = result["attack"]
    if name.startswith("finetune") or name == "transfer":
        last = rows[-1]
        p_value = format_p_value(last["signature_p_value"], last["signature_log10_p_value"])
        return [(f"| {label} | {_pct(last['attacker_accuracy'])} | detection {_pct(last['signature_detection'])} "
                 f"(p = {p_value}) | {'verified' if last['verified'] else '**not verified**'} |", last)]
    if name == "refit":
        return [(f"| refit, peak lr {r['peak_lr']:g} (warm-up {result['options'].get('warmup', 0.1):.0%}, cosine decay"
                 f"{', Adam' if result['options'].get('optimizer') == 'adam' else ''}) | "
                 f"{_pct(r['attacker_accuracy'])} | detection {_pct(r['signature_detection'])} (p = "
                 f"{format_p_value(r['signature_p_value'], r['signature_log10_p_value'])}), passport-aware "
                 f"{_pct(r['passport_aware_accuracy'])} | {'verified' if r['verified'] else '**not verified**'} |", r)
                for r in rows]
    if name == "merge":
        return [(f"| merge with the attacker's {'fine-tune of the stolen model' if r['partner'] == 'finetuned' else 'own model (weights matched)'}"
                 f" ({_pct(r['partner_accuracy'])}{', Adam' if result['options'].get('optimizer') == 'adam' else ''}), alpha {r['alpha']:g} | {_pct(r['attacker_accuracy'])} | detection "
                 f"{_pct(r['signature_detection'])} (p = {format_p_value(r['signature_p_value'], r['signature_log10_p_value'])}), "
                 f"passport-aware {_pct(r['passport_aware_accuracy'])} | {'verified' if r['verified'] else '**not verified**'} |", r)
                for r in rows]
    if name == "prune":
        lines: list[tuple[str, dict | None]] = []
        for row in rows:
            if row["rate"] in (0.3, 0.5, 0.7, 0.9):
                lines.append((f"| prune {row['rate']:.0%} | {_pct(row['attacker_accuracy'])} | detection "
                              f"{_pct(row['signature_detection'])}, passport-aware {_pct(row['passport_aware_accuracy'])} | "
                              f"{'verified' if row['verified'] else '**not verified**'} |", row))
        lines.append((f"| prune: highest rate still verified | | | {result['highest_rate_still_verified']} |", None))
        return lines
    if name == "obfuscate":
        def unpermuted(r):
            if r.get("norms_folded"):
                return f"; {r['norms_folded']} batch norms folded into their producers"
            return "; no layer can be permuted" if r["transform"] in ("permute", "all three") and not r.get("layers_permuted") else ""

        def stream(r):
            if r.get("stream_rotated"):
                return f"; residual stream ({r['stream_rotated']} channels) rotated, gains folded into readers"
            if r["transform"] == "rotate":
                return f"; nothing rotated: {r['layers_skipped'].get('rotation', '')}"
            return f"; residual stream ({r['stream_permuted']} channels) permuted" if r.get("stream_permuted") else ""

        def aligned(r):
            if r.get("aligned_signature_bits") == 0 and r.get("aligned_trigger_count"):
                how = "stream rotated back" if r.get("aligned_stream_rotated_back") else "every keyed layer permuted back"
                return (f"{how}, so no bit counts; triggers "
                        f"{r['aligned_trigger_matches']}/{r['aligned_trigger_count']} answered (black-box evidence only)")
            charged = ""
            if r.get("aligned_bits_charged_log2"):
                charged = (f"stream permuted back, {r['aligned_signature_matches']}/{r['aligned_signature_bits']} bits "
                           f"charged 2^{r['aligned_bits_charged_log2']:.0f} (needed {r['aligned_bits_needed']}); ")
            return (f"{charged}detection {_pct(r['aligned_signature_detection'])}, passport-aware "
                    f"{_pct(r['aligned_passport_aware_accuracy'])}")

        return [(f"| obfuscate: {r['transform']} (max output change {r['max_output_difference']:.1e}{unpermuted(r)}{stream(r)}) | "
                 f"{_pct(r['attacker_accuracy'])} | key order: detection {_pct(r['signature_detection'])}; aligned to the "
                 f"owner's release: {aligned(r)} | {'verified' if r['verified'] else 'not verified'} in key order, "
                 f"{'**verified**' if r['aligned_verified'] else '**not verified**'} aligned |", r) for r in rows]
    if name == "eclipse":
        def undone(r):
            if r.get("aligned", "aligned") != "aligned":
                return f"with --reference: {r['aligned'].split(': ', 1)[-1].split(' (after')[0]}"
            return (f"with --reference: {r['merged']} copies merged, {r['cancelled']} cancelling groups dropped, "
                    f"detection {_pct(r['signature_detection'])} (p = {r['signature_p_value']}), passport-aware "
                    f"{_pct(r['passport_aware_accuracy'])}")

        def cancelling(r):
            return f", {r['cancel']:g} cancelling channels per channel" if r["cancel"] else ""
        return [(f"| eclipse (DeepEclipse-style): {r['split']:.0%} of channels split into {r['channels_added']} copies"
                 f"{cancelling(r)}, "
                 f"{r['norms_folded']} norms folded, permuted/flipped/rescaled (max output change "
                 f"{r['max_output_difference']:.1e}) | {_pct(r['attacker_accuracy'])} | key order: not verifiable (widths "
                 f"differ); {undone(r)} | {'**verified**' if r['verified'] else '**not verified**'} aligned |", r)
                for r in rows]
    if name == "quantize":
        return [(f"| quantize {r['mode']} | {_pct(r['attacker_accuracy'])} (served {_pct(r['served_accuracy'])}) | "
                 f"detection {_pct(r['signature_detection'])} (p = {r['signature_p_value']}) | "
                 f"{'verified' if r['verified'] else '**not verified**'} |", r) for r in rows]
    if name == "reprotect":
        r = rows[0]
        return [(f"| re-protect ({r['thief_passports']} passports, {r['epochs']} epochs, lr {r['lr']}) | "
                 f"{_pct(r['attacker_accuracy'])} | owner's detection {_pct(r['owner_signature_detection'])} "
                 f"(p = {r['owner_signature_p_value']}) | owner's proof {'shows' if r['owner_proof_shows'] else '**fails**'}"
                 f"; dispute: {r.get('dispute_winner', '-')} |", r)]
    if name == "ambiguity1":
        r = rows[0]
        return [(f"| ambiguity I (forged claim) | forged branch {_pct(r['forged_accuracy'])} vs released "
                 f"{_pct(r['released_accuracy'])} | forged signs {_pct(r['forged_signature_detection'])} | "
                 f"forged claim {'**verified**' if r['forged_verified'] else 'rejected'} |", r)]
    if name == "ambiguity2":
        return [(f"| ambiguity II, {r['flip']:.0%} flipped (forged claim) | forged branch {_pct(r['forged_accuracy'])} | "
                 f"target reached {_pct(r['target_detection'])}, dissimilar to owner {_pct(r['bit_dissimilarity_to_owner'])} | "
                 f"forged claim {'**verified**' if r['forged_verified'] else 'rejected'} |", r) for r in rows]
    if name.startswith("erb"):
        r = rows[0]
        drop = r["released_accuracy"] - r["forged_accuracy"]
        verdict = "**meets** the paper's accuracy condition" if drop <= 0.10 else f"{100 * drop:.1f} points below released"
        return [(f"| {label}, {result['options'].get('epochs')} epochs (forged branch) | {_pct(r['forged_accuracy'])} vs released "
                 f"{_pct(r['released_accuracy'])} | dissimilar to owner {_pct(r['bit_dissimilarity_to_owner'])}, own target "
                 f"{_pct(r['target_detection'])}, agreement with the hash of its own parameters {_pct(r['hash_bound_agreement'])} | "
                 f"{verdict}; hash-bound claim {'passes' if r['hash_bound_claim_passes'] else '**fails**'} |", r)]
    r = rows[0]  # forge
    closeness = (f", best agreement with its own hash over {r['hash_rounds']} rounds {_pct(r['best_agreement'])}"
                 if r.get("hash_rounds") else f", decodes {r['forged_decoded_text']!r}")
    return [(f"| forge (closed form, no data, {r['signature_mode']} signature) | forged branch "
             f"{_pct(r['forged_passport_aware_accuracy'])} vs released {_pct(r['released_accuracy'])} | forged signs "
             f"{_pct(r['forged_signature_detection'])}{closeness} | forged claim "
             f"{'**verified**' if r['forged_verified'] else 'rejected'} |", r)]


def scratch_cost(arch: str, dataset: str, epochs: int, out: Path) -> dict:
    """What training the model from scratch costs here: plain `passportnorm train` with the owner's
    budget on the whole training split (its training seconds, evaluation excluded)."""
    from _runs import finished_run

    from passportnorm.data import load_dataset

    run = finished_run(RunOptions(arch=arch, dataset=dataset, epochs=epochs, seed=0, out=str(out)), protected=False)
    return {"seconds": sum(row["seconds"] for row in run["history"]), "samples": len(load_dataset(dataset).train)}


def rule_cells(row: dict | None, result: dict, scratch: dict) -> str:
    """The removal rule's answer for a row and what the attack cost against training from scratch."""
    removed = "" if row is None else {None: "-", True: "**removed**", False: "no"}[row.get("removed")]
    cost = result.get("cost")
    if row is None or cost is None:
        return f" {removed} | |"
    seconds, samples = cost["attacker_seconds"], cost["attacker_samples"]
    return (f" {removed} | {seconds:.0f} s ({seconds / scratch['seconds']:.2f}x), {samples} samples "
            f"({samples / scratch['samples']:.0%}) |")


def removal_summary(results: list[tuple[str, dict]], scratch: dict, command: str) -> str:
    """How many removal attacks succeed by the field's rule, and what from scratch costs."""
    judged = [(label, r) for label, r in results if any(row.get("removed") is not None for row in r["rows"])]
    won = [label for label, r in judged if any(row.get("removed") for row in r["rows"])]
    original = next((r["original_accuracy"] for _, r in judged if "original_accuracy" in r), None)
    baseline = "" if original is None else f" of the release's {100 * original:.1f}%"
    return (f"Removals by the field's rule (the owner's proof gone while the attacker's model stays within 5 points"
            f"{baseline}): **{len(won)} of {len(judged)} removal attacks** ({', '.join(won) or 'none'}); a sweep counts if "
            f"any of its settings succeeds; forgeries and transfer to another task are not removals (-). Training from "
            f"scratch here (`{command}`): {scratch['seconds']:.0f} s on {scratch['samples']} samples; an attack's time "
            "is its own work (training, transforming), without the owner's verification after each step.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18", help="the owner's model (the CLI's --arch)")
    parser.add_argument("--dataset", default="mnist5k", help="the owner's data (pydocs for --arch gpt)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of each training attack")
    parser.add_argument("--owner-epochs", type=int, default=8, help="the owner's training epochs (protect's default: 8)")
    parser.add_argument("--ratio", type=float, default=0.5, help="the owner's share of passport-aware steps (protect --ratio)")
    parser.add_argument("--out", default="runs/bench/robustness")
    parser.add_argument("--reuse", action="store_true", help="reuse the owner's model found in --out")
    parser.add_argument("--docs", action="store_true")
    args = parser.parse_args()
    command = shlex.join(["python", "benchmarks/robustness.py", *sys.argv[1:]])
    default = args.arch == "resnet18"
    out = Path(args.out) if default else Path(args.out) / args.arch
    owner = out / "owner"
    if not (args.reuse and (owner / "owner-key" / "key.json").is_file()):
        print("training the owner's protected model (defaults) ...", flush=True)
        with contextlib.redirect_stdout(io.StringIO()):
            run_protect(RunOptions(arch=args.arch, dataset=args.dataset, epochs=args.owner_epochs, out=str(owner), secret_seed=0,
                                   ratio=args.ratio, overwrite=True))
    scratch_epochs = args.owner_epochs
    print("training the same model from scratch, plain (the cost baseline) ...", flush=True)
    scratch = scratch_cost(args.arch, args.dataset, scratch_epochs, out / "scratch")
    scratch_command = (f"passportnorm train --arch {args.arch} --dataset {args.dataset} --epochs {scratch_epochs}")
    lines = ["| attack | attacker's accuracy | signature evidence | owner's verdict | removed (field's rule) | "
             "attacker's cost: time, data (vs from scratch) |", "|---|---:|---|---|---|---|"]
    threats, results = {}, []
    for name, options, label in PLAN if default else TRANSFORMER_PLAN:
        print(f"{label} ...", flush=True)
        shutil.rmtree(out / label, ignore_errors=True)  # a fresh attack, not a resume of an older run
        with contextlib.redirect_stdout(io.StringIO()):
            settings = {"epochs": args.epochs, **options}
            result = record(run_attack(name, owner / "released", owner / "owner-key", out / label, **settings), settings)
        lines += [line + rule_cells(row, result, scratch) for line, row in summarise(label, result)]
        results.append((label, result))
        threats[result["attack"]] = result["threat_model"]
        for plot in result["plots"] if default else []:
            (DOCS / "robustness").mkdir(parents=True, exist_ok=True)
            shutil.copy(out / label / plot, DOCS / "robustness" / f"{label}.png")
    table = "\n".join(lines) + "\n\n" + removal_summary(results, scratch, scratch_command)
    print(table)
    if args.docs and not default:
        header = (
            f"Command: `{command}` "
            f"({machine()}; owner: `passportnorm protect --arch {args.arch} --epochs {args.owner_epochs}"
            f"{'' if args.ratio == 0.5 else f' --ratio {args.ratio:g}'}` on {args.dataset}, seed 0, hash-bound signature, every norm paired with its consumer; each "
            f"training attack {args.epochs} epochs; attacker data: 50% of the training split; the owner verifies with "
            "the test split and the default rule, aligned to the release where the attack is one alignment undoes).\n\n"
        )
        notes = "\n".join(f"- **{k}**: {v}" for k, v in threats.items())
        update_section("ROBUSTNESS.md", f"attacks-{args.arch}", header + table + "\n\nThreat models:\n\n" + notes)
    elif args.docs:
        header = (
            f"Command: `python benchmarks/robustness.py --docs` (owner: default `passportnorm protect`, ResNet18 x0.25 on "
            f"mnist5k, seed 0, hash-bound signature; each training attack {args.epochs} epochs, ERB 100; attacker data: 50% "
            "of the training split, 10% for ambiguity and ERB; the owner verifies with the test split and the default "
            "rule: p <= 2^-128, text signatures refused). The paper's text-signature scheme, attack by attack against "
            "this one: [SECURITY.md](SECURITY.md).\n\n"
        )
        notes = "\n".join(f"- **{k}**: {v}" for k, v in threats.items())
        plots = (
            "\n\nPlots: ![pruning](robustness/prune.png) ![ambiguity II flip sweep](robustness/ambiguity2.png) "
            "![fine-tuning, FTAL](robustness/ftal.png) ![fine-tuning, RTAL](robustness/rtal.png)\n"
        )
        update_section("ROBUSTNESS.md", "attacks", header + table + "\n\nThreat models:\n\n" + notes + plots)


if __name__ == "__main__":
    main()
