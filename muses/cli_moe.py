"""``muses moe``: upcycle a model's feed-forward layers into experts, and report a model's expert routing.

Training an MoE model is ``muses train --config configs/moe/...`` (from scratch: ``model.scratch.moe``; upcycled:
``model.upcycle``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from muses.cli_common import DeviceOpt, ModelOpt, console, user_errors
from muses.errors import InputError

moe_app = typer.Typer(help="Mixture-of-Experts: upcycling and routing statistics.", no_args_is_help=True)


def _layers(spec: str | None) -> list[int] | None:
    if not spec:
        return None
    try:
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--layers {spec!r} must be comma-separated layer numbers, e.g. 0,2,4.") from None


@moe_app.command("upcycle")
def upcycle(
    out: Annotated[Path, typer.Argument(help="Folder for the upcycled MuSES model.")],
    model: ModelOpt = "default",
    experts: Annotated[int, typer.Option(help="Experts per layer, each a copy of the layer's FFN.")] = 4,
    top_k: Annotated[int, typer.Option(help="Experts per token: 2 keeps the dense outputs at init.")] = 2,
    layers: Annotated[str | None, typer.Option(help="Layers to upcycle, e.g. 0,2,4 (default: all).")] = None,
    device: DeviceOpt = None,
) -> None:
    """Turn each feed-forward block of a BERT-style model into experts initialised from it, and save it."""
    with user_errors():
        from muses.encoder import MultiScaleEncoder
        from muses.scratch.moe import MoEConfig, moe_layers
        from muses.scratch.upcycle import upcycle_encoder

        if out.exists() and any(out.iterdir()):
            raise InputError(f"{out} exists and is not empty; pick a new folder.")
        enc = MultiScaleEncoder.from_base(model, device=device)
        upcycle_encoder(enc, MoEConfig(n_experts=experts, top_k=top_k), _layers(layers))
        enc.save(out)
        console.print(f"upcycled {len(moe_layers(enc))} layers into {experts} experts (top-{top_k}) -> {out}")


@moe_app.command("routing")
def routing(
    model: ModelOpt = "default",
    articles: Annotated[int, typer.Option(help="Held-out Wikipedia articles to route.")] = 600,
    plot: Annotated[Path | None, typer.Option(help="Write the load and topic-routing figure here (.png).")] = None,
) -> None:
    """Tokens/s, and per MoE layer the expert load, balance, drop rate and topic specialisation."""
    with user_errors():
        from muses.evaluation.baselines import load_corpus_encoder
        from muses.evaluation.routing import evaluate_routing, routing_articles
        from muses.plots import plot_routing

        if articles < 1:
            raise InputError("--articles must be at least 1.")
        metrics = evaluate_routing(load_corpus_encoder(model), routing_articles(articles))
        console.print(f"tokens/s: {metrics.get('tokens_per_s', 0.0):.0f}")
        layers = sorted({k.split("/")[0] for k in metrics if k.endswith("/balance") and k.startswith("layer")})
        if not layers:
            console.print(f"{model} has no MoE layer.")
            return
        table = Table("layer", "load per expert", "balance", "drop rate", "specialisation")
        for layer in layers:
            n_experts = sum(1 for k in metrics if k.startswith(f"{layer}/load/e"))
            loads = [metrics[f"{layer}/load/e{e}"] for e in range(n_experts)]
            table.add_row(
                layer,
                " ".join(f"{v:.2f}" for v in loads),
                f"{metrics[f'{layer}/balance']:.3f}",
                f"{metrics[f'{layer}/drop_rate']:.4f}",
                f"{metrics[f'{layer}/specialisation']:.3f}",
            )
        console.print(table)
        if plot is not None:
            plot_routing(metrics, model, plot)
            console.print(f"figure -> {plot}")
