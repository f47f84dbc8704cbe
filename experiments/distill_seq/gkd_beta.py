"""GKD's generalised Jensen–Shannon divergence against β, in GKD's convention and in klexp's
continuous one: the value, the gradient's norm and the gradient's direction (cosine with the
forward and with the reverse KL's gradient), for one teacher and one student next-token
distribution over 8 tokens (float64). Writes ``gkd_beta.png`` and ``gkd_beta.md`` to ``--out``.

    python experiments/distill_seq/gkd_beta.py --out experiments/distill_seq
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from klexp.core.distill import (
    forward_kl,
    generalised_jsd,
    gkd_generalised_jsd,
    reverse_kl,
)

BETAS = [0.0, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999,
         0.9999, 1.0]


def measure(function, teacher: torch.Tensor, student: torch.Tensor) -> tuple[float, torch.Tensor]:
    logits = student.clone().requires_grad_()
    value = function(teacher, logits)
    (gradient,) = torch.autograd.grad(value, logits)
    return float(value.detach()), gradient


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(args.seed)
    teacher = torch.randn(8, generator=generator, dtype=torch.float64) * 2
    student = torch.randn(8, generator=generator, dtype=torch.float64)
    _, forward_grad = measure(forward_kl, teacher, student)
    _, reverse_grad = measure(reverse_kl, teacher, student)

    rows = []
    for beta in BETAS:
        for name, function in (("gkd", gkd_generalised_jsd), ("continuous", generalised_jsd)):
            value, gradient = measure(lambda t, s, f=function, b=beta: f(t, s, b), teacher, student)
            rows.append({"beta": beta, "convention": name, "value": value,
                         "grad_norm": float(gradient.norm()),
                         "cos_forward": cosine(gradient, forward_grad),
                         "cos_reverse": cosine(gradient, reverse_grad)})

    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["| β | convention | value (nats) | ‖∇‖ | cos(∇, ∇KL(T‖S)) | cos(∇, ∇KL(S‖T)) |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['beta']:g} | {r['convention']} | {r['value']:.4f} | {r['grad_norm']:.4f} | "
              f"{r['cos_forward']:.3f} | {r['cos_reverse']:.3f} |" for r in rows]
    (args.out / "gkd_beta.md").write_text("\n".join(lines) + "\n")

    figure, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, style in (("gkd", "o-"), ("continuous", "s--")):
        part = [r for r in rows if r["convention"] == name]
        betas = [r["beta"] for r in part]
        axes[0].plot(betas, [r["value"] for r in part], style, label=name)
        axes[1].plot(betas, [r["grad_norm"] for r in part], style, label=name)
        axes[2].plot(betas, [r["cos_forward"] for r in part], style, label=f"{name}: cos with ∇KL(T‖S)")
        axes[2].plot(betas, [r["cos_reverse"] for r in part], style, alpha=0.5,
                     label=f"{name}: cos with ∇KL(S‖T)")
    for axis, title in zip(axes, ("value (nats)", "gradient norm", "gradient direction"), strict=True):
        axis.set_xlabel("β")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].legend()
    axes[2].legend(fontsize=7)
    figure.suptitle("Generalised JS, M = βT + (1−β)S: GKD's convention jumps at β = 0 and 1 "
                    "(endpoints special-cased); the continuous one does not")
    figure.tight_layout()
    figure.savefig(args.out / "gkd_beta.png", dpi=110)
    print(f"wrote {args.out / 'gkd_beta.png'} and {args.out / 'gkd_beta.md'}")


if __name__ == "__main__":
    main()
