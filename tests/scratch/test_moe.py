"""MoE feed-forward layer on tiny hand-made tensors: gating, capacity, losses, masking, upcycling, routing stats."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor, nn

from muses.errors import InputError
from muses.scratch.moe import (
    Expert,
    MoEConfig,
    MoEFeedForward,
    moe_layers,
    record_routing,
    routing_counts,
    set_domain,
)


def gelu_exact(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def sig(d: float) -> float:
    """Two renormalised softmax probs: p_a / (p_a + p_b) = sigmoid(l_a - l_b)."""
    return 1.0 / (1.0 + math.exp(-d))


def softmax_row(logits: list[float]) -> list[float]:
    exps = [math.exp(v) for v in logits]
    return [e / sum(exps) for e in exps]


def identity_router_layer(n_experts: int, top_k: int, **kwargs: object) -> MoEFeedForward:
    """A layer with hidden == n_experts and router == identity, so the router logits are the input itself."""
    torch.manual_seed(0)
    layer = MoEFeedForward(n_experts, 6, MoEConfig(n_experts=n_experts, top_k=top_k, **kwargs))  # type: ignore[arg-type]
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(n_experts))
    return layer.eval()


# --------------------------------------------------------------------------------------------------- experts, gating


def test_expert_is_bert_ffn_with_exact_gelu() -> None:
    torch.manual_seed(0)
    expert = Expert(4, 7).eval()
    x = torch.randn(3, 4)
    want = gelu_exact(x @ expert.w_in.weight.T + expert.w_in.bias) @ expert.w_out.weight.T + expert.w_out.bias
    torch.testing.assert_close(expert(x), want, atol=1e-6, rtol=0)


def test_top1_gate_is_raw_probability_and_output_is_gated_expert() -> None:
    layer = identity_router_layer(3, top_k=1, capacity_factor_eval=None)
    rows = [[2.0, 1.0, 0.0], [0.0, 0.5, 3.0], [1.0, 2.0, -1.0]]
    out = layer(torch.tensor(rows))
    assert out.expert_index.tolist() == [[0], [2], [1]]
    want_gate = [softmax_row(r)[e] for r, e in zip(rows, [0, 2, 1], strict=True)]
    assert out.gate[:, 0].tolist() == pytest.approx(want_gate, abs=1e-6)
    assert out.kept.all()
    x = torch.tensor(rows)
    for i, e in enumerate([0, 2, 1]):
        torch.testing.assert_close(out.output[i], want_gate[i] * layer.experts[e](x[i]), atol=1e-6, rtol=0)


def test_top2_gates_are_renormalised_and_output_is_weighted_sum() -> None:
    layer = identity_router_layer(3, top_k=2, capacity_factor_eval=None)
    rows = [[2.0, 1.0, 0.0], [0.0, 0.5, 3.0], [1.0, 2.0, -1.0]]
    x = torch.tensor(rows)
    out = layer(x)
    assert out.expert_index.tolist() == [[0, 1], [2, 1], [1, 0]]
    want = [[sig(2 - 1), sig(1 - 2)], [sig(3 - 0.5), sig(0.5 - 3)], [sig(2 - 1), sig(1 - 2)]]
    assert out.gate.tolist() == [pytest.approx(w, abs=1e-6) for w in want]
    for i in range(3):
        (a, b), (ga, gb) = out.expert_index[i].tolist(), want[i]
        hand = ga * layer.experts[a](x[i]) + gb * layer.experts[b](x[i])
        torch.testing.assert_close(out.output[i], hand, atol=1e-6, rtol=0)


def test_batched_shape_is_kept() -> None:
    layer = identity_router_layer(3, top_k=2)
    torch.manual_seed(1)
    x = torch.randn(2, 5, 3)
    out = layer(x)
    assert out.output.shape == (2, 5, 3)
    assert out.expert_index.shape == out.gate.shape == out.kept.shape == (10, 2)
    torch.testing.assert_close(out.output.reshape(10, 3), layer(x.reshape(10, 3)).output)


# --------------------------------------------------------------------------------------------------------- capacity


def test_capacity_drops_overflow_tokens_in_order_top1() -> None:
    # every token prefers expert 0; capacity = ceil(1.0 * 1 * 4 / 2) = 2 in training, ceil(2.0 * 1 * 4 / 2) = 4 in eval
    layer = identity_router_layer(2, top_k=1, capacity_factor_train=1.0, capacity_factor_eval=2.0)
    x = torch.tensor([[3.0, 0.0], [2.0, 1.0], [1.0, 0.0], [4.0, -1.0]])
    layer.train()
    assert layer.capacity(4) == 2
    out = layer(x)
    assert out.expert_index[:, 0].tolist() == [0, 0, 0, 0]
    assert out.kept[:, 0].tolist() == [True, True, False, False]
    assert out.gate[2:].abs().sum() == 0
    assert torch.equal(out.output[2:], torch.zeros(2, 2))
    p0 = torch.softmax(x, dim=-1)[:, 0]
    torch.testing.assert_close(out.output[:2], p0[:2, None] * layer.experts[0](x[:2]), atol=1e-6, rtol=0)

    layer.eval()  # eval factor 2.0: capacity 4, nothing dropped
    assert layer.capacity(4) == 4
    assert layer(x).kept.all()

    layer.config.capacity_factor_train = None  # None: unlimited
    layer.train()
    assert layer.capacity(4) is None
    assert layer(x).kept.all()


def test_capacity_serves_first_choices_before_second_choices() -> None:
    # capacity = ceil(0.5 * 2 * 4 / 2) = 2 per expert; tokens 0-2 prefer expert 0, token 3 prefers expert 1
    layer = identity_router_layer(2, top_k=2, capacity_factor_eval=0.5)
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    out = layer(x)
    assert out.expert_index.tolist() == [[0, 1], [0, 1], [0, 1], [1, 0]]
    # expert 0: first choices of tokens 0, 1 (token 2's overflows); expert 1: token 3's FIRST choice beats the
    # earlier tokens' second choices, then token 0's second choice takes the last slot
    assert out.kept.tolist() == [[True, True], [True, False], [False, False], [True, False]]
    want_gate = [[sig(1), sig(-1)], [sig(2), 0.0], [0.0, 0.0], [sig(1), 0.0]]  # dropped: 0, no renormalisation
    assert out.gate.tolist() == [pytest.approx(w, abs=1e-6) for w in want_gate]
    e0, e1 = layer.experts[0], layer.experts[1]
    want = torch.stack([sig(1) * e0(x[0]) + sig(-1) * e1(x[0]), sig(2) * e0(x[1]), torch.zeros(2), sig(1) * e1(x[3])])
    torch.testing.assert_close(out.output, want, atol=1e-6, rtol=0)


def test_capacity_rounding_ignores_float_noise() -> None:
    layer = MoEFeedForward(2, 4, MoEConfig(n_experts=1, top_k=1, capacity_factor_eval=1.1)).eval()
    assert layer.capacity(10) == 11  # 1.1 * 10 = 11.000000000000002 in floats
    assert layer.capacity(3) == 4  # ceil(3.3)


# ----------------------------------------------------------------------------------------------------------- losses


def test_balance_loss_is_one_for_uniform_routing_and_larger_when_skewed() -> None:
    layer = identity_router_layer(2, top_k=1, capacity_factor_eval=None)
    uniform = layer(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # f = [.5, .5], P = [.5, .5]
    assert uniform.balance_loss.item() == pytest.approx(1.0, abs=1e-6)

    x = torch.tensor([[2.0, 0.0], [1.0, 0.0], [3.0, 1.0]])  # every first choice is expert 0: f = [1, 0]
    skewed = layer(x)
    p0 = [softmax_row(r)[0] for r in x.tolist()]
    want = 2 * (1.0 * sum(p0) / 3 + 0.0)  # n_experts * sum_i f_i * P_i
    assert skewed.balance_loss.item() == pytest.approx(want, abs=1e-6)
    assert skewed.balance_loss.item() > 1.5


def test_z_loss_is_mean_squared_logsumexp() -> None:
    layer = identity_router_layer(3, top_k=2)
    rows = [[2.0, 1.0, 0.0], [0.0, 0.5, 3.0]]
    out = layer(torch.tensor(rows))
    want = sum(math.log(sum(math.exp(v) for v in r)) ** 2 for r in rows) / 2
    assert out.z_loss.item() == pytest.approx(want, abs=1e-5)
    assert out.z_loss.dtype == torch.float32


def test_aux_loss_weights_the_two_losses() -> None:
    layer = identity_router_layer(3, top_k=2, balance_weight=0.5, z_loss_weight=0.25)
    out = layer(torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.5, 3.0]]))
    want = 0.5 * out.balance_loss.item() + 0.25 * out.z_loss.item()
    assert layer.aux_loss(out).item() == pytest.approx(want, abs=1e-6)


# ------------------------------------------------------------------------------------------------------------ masking


def test_padding_tokens_get_zero_and_do_not_count() -> None:
    layer = identity_router_layer(2, top_k=1, capacity_factor_train=1.0).train()
    x = torch.tensor([[[3.0, 0.0], [0.0, 2.0], [1.0, 0.0]], [[2.0, 1.0], [5.0, 0.0], [6.0, 0.0]]])  # [2, 3, 2]
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    out = layer(x, mask)
    assert torch.equal(out.output[1, 1:], torch.zeros(2, 2))
    assert out.expert_index.shape == (4, 1)
    # same as routing the 4 real tokens alone: capacity ceil(1.0 * 4 / 2) = 2, not ceil(6 / 2) = 3
    alone = layer(x[mask.bool()])
    assert out.kept[:, 0].tolist() == alone.kept[:, 0].tolist() == [True, True, True, False]
    torch.testing.assert_close(out.output[mask.bool()], alone.output)
    torch.testing.assert_close(out.balance_loss, alone.balance_loss)
    torch.testing.assert_close(out.z_loss, alone.z_loss)

    bool_out = layer(x, mask.bool())
    torch.testing.assert_close(bool_out.output, out.output)


def test_empty_input_returns_zeros() -> None:
    layer = identity_router_layer(3, top_k=2)
    x = torch.randn(2, 4, 3)
    out = layer(x, torch.zeros(2, 4, dtype=torch.bool))
    assert torch.equal(out.output, torch.zeros(2, 4, 3))
    assert out.balance_loss.item() == 0.0 and out.z_loss.item() == 0.0
    assert out.expert_index.shape == out.gate.shape == out.kept.shape == (0, 2)
    assert layer(torch.zeros(0, 3)).output.shape == (0, 3)


def test_bad_shapes_raise_input_error() -> None:
    layer = identity_router_layer(3, top_k=2)
    with pytest.raises(InputError, match=r"\[\.\.\., 3\]"):
        layer(torch.randn(2, 4))
    with pytest.raises(InputError, match="mask"):
        layer(torch.randn(2, 4, 3), torch.ones(2, 3))


# ------------------------------------------------------------------------------------------------------- upcycling


@pytest.mark.parametrize("train", [False, True])
def test_from_dense_equals_dense_ffn(train: bool) -> None:
    torch.manual_seed(0)
    w_in, w_out = nn.Linear(8, 16), nn.Linear(16, 8)
    config = MoEConfig(n_experts=4, top_k=2, capacity_factor_train=None, capacity_factor_eval=None)
    layer = MoEFeedForward.from_dense(w_in, w_out, config).train(train)
    x = torch.randn(2, 5, 8)
    dense = gelu_exact(x @ w_in.weight.T + w_in.bias) @ w_out.weight.T + w_out.bias
    with torch.no_grad():
        out = layer(x)
    torch.testing.assert_close(out.output, dense, atol=1e-6, rtol=0)
    assert len({tuple(row) for row in out.expert_index.tolist()}) > 1  # the router really spreads tokens
    # copies, not shared parameters; the router is not copied from anywhere
    assert layer.experts[0].w_in.weight is not layer.experts[1].w_in.weight
    with torch.no_grad():
        layer.experts[0].w_in.weight.add_(1.0)
    assert torch.equal(layer.experts[1].w_in.weight, w_in.weight)


def test_from_dense_without_bias_and_bad_shapes() -> None:
    torch.manual_seed(0)
    w_in, w_out = nn.Linear(4, 6, bias=False), nn.Linear(6, 4, bias=False)
    layer = MoEFeedForward.from_dense(w_in, w_out, MoEConfig(n_experts=2, capacity_factor_eval=None)).eval()
    x = torch.randn(3, 4)
    torch.testing.assert_close(layer(x).output, gelu_exact(x @ w_in.weight.T) @ w_out.weight.T, atol=1e-6, rtol=0)
    with pytest.raises(InputError, match=r"w_in: Linear\(H, F\)"):
        MoEFeedForward.from_dense(w_in, nn.Linear(5, 4), MoEConfig())


def test_expert_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    w_in, w_out = nn.Linear(8, 32), nn.Linear(32, 8)
    config = MoEConfig(n_experts=2, top_k=2, capacity_factor_train=None, capacity_factor_eval=None, expert_dropout=0.5)
    layer = MoEFeedForward.from_dense(w_in, w_out, config)
    x = torch.randn(6, 8)
    dense = gelu_exact(x @ w_in.weight.T + w_in.bias) @ w_out.weight.T + w_out.bias
    layer.eval()
    torch.testing.assert_close(layer(x).output, dense, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x).output, layer(x).output, atol=0, rtol=0)
    layer.train()
    a, b = layer(x).output, layer(x).output
    assert not torch.allclose(a, dense, atol=1e-3)
    assert not torch.allclose(a, b, atol=1e-3)
    # zeroed hidden units: an expert's hidden activations have about half their entries zeroed
    expert = layer.experts[0]
    hidden = expert.dropout(expert.act(expert.w_in(torch.randn(200, 8))))
    assert 0.35 < (hidden == 0).float().mean().item() < 0.65


# -------------------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("top_k", [1, 2])
def test_gradients_reach_router_and_experts(top_k: int) -> None:
    torch.manual_seed(0)
    layer = MoEFeedForward(6, 12, MoEConfig(n_experts=3, top_k=top_k, router_init_std=0.5)).train()
    x = torch.randn(4, 5, 6)
    out = layer(x)
    (out.output * torch.randn_like(out.output)).sum().backward()
    assert layer.router.weight.grad is not None and layer.router.weight.grad.abs().sum() > 0
    used = out.expert_index[out.kept].unique().tolist()
    for e in used:
        assert layer.experts[e].w_in.weight.grad is not None
        assert layer.experts[e].w_in.weight.grad.abs().sum() > 0
        assert layer.experts[e].w_out.bias.grad.abs().sum() > 0

    layer.zero_grad()
    layer.aux_loss(layer(x)).backward()
    assert layer.router.weight.grad is not None and layer.router.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------------------- stats


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = identity_router_layer(2, top_k=1, capacity_factor_eval=1.0)
        self.b = identity_router_layer(2, top_k=2, capacity_factor_eval=None)
        self.dense = nn.Linear(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.a(x).output + x).output


def test_routing_stats_per_domain() -> None:
    model = TwoLayers().eval()
    assert [name for name, _ in moe_layers(model)] == ["a", "b"]
    bio = torch.tensor([[3.0, 0.0], [2.0, 0.0], [4.0, 0.0], [0.0, 5.0]])  # layer a: 3 x expert 0, 1 x expert 1
    art = torch.tensor([[0.0, 3.0], [0.0, 2.0]])  # layer a: 2 x expert 1
    with record_routing(model, "Biology") as stats:
        assert set(stats) == {"a", "b"}
        model(bio)
        set_domain(model, "Art")
        model(art)
    a = stats["a"]
    assert a.domains == ["Biology", "Art"]
    assert a.counts["Biology"].tolist() == [3, 1] and a.counts["Art"].tolist() == [0, 2]
    assert a.tokens == {"Biology": 4, "Art": 2}
    # capacity per forward: Biology ceil(1.0 * 1 * 4 / 2) = 2 drops its third expert-0 token, Art ceil(2 / 2) = 1 its
    # second expert-1 token
    assert a.dropped == {"Biology": 1, "Art": 1}
    assert a.drop_rate("Biology") == pytest.approx(1 / 4)
    assert a.drop_rate() == pytest.approx(2 / 6)
    assert a.load("Biology").tolist() == pytest.approx([0.75, 0.25])
    assert a.load().tolist() == pytest.approx([0.5, 0.5])
    assert a.balance("Biology") == pytest.approx(0.75 / 0.5)
    assert a.balance("Art") == pytest.approx(2.0)
    assert a.balance() == pytest.approx(1.0)
    # top-2 over 2 experts: every token uses both, in every domain
    assert stats["b"].counts["Biology"].tolist() == [4, 4] and stats["b"].balance() == pytest.approx(1.0)

    layers, domains, counts = routing_counts(stats)
    assert layers == ["a", "b"] and domains == ["Biology", "Art"]
    assert counts.tolist() == [[[3, 1], [0, 2]], [[4, 4], [2, 2]]]
    assert json.loads(json.dumps(a.to_dict()))["counts"] == {"Biology": [3, 1], "Art": [0, 2]}

    # recording stops on exit, counts stay
    assert model.a.stats is None and model.b.stats is None
    model(bio)
    assert a.counts["Biology"].tolist() == [3, 1]
    with pytest.raises(InputError, match="record_routing"):
        set_domain(model, "Physics")
    with pytest.raises(InputError, match="Physics"):
        a.load("Physics")


def test_nested_record_routing_accumulates() -> None:
    model = TwoLayers().eval()
    x = torch.tensor([[3.0, 0.0], [0.0, 5.0]])
    with record_routing(model, "outer") as outer:
        model(x)
        with record_routing(model.a, "inner") as inner:  # the layer itself is named ""
            assert list(inner) == [""] and inner[""] is outer["a"]
            model(x)
        assert outer["a"].domain == "outer"  # restored on exit of the inner block
        assert model.a.stats is outer["a"]  # still recording for the outer block
        model(x)
    assert outer["a"].tokens == {"outer": 4, "inner": 2}
    assert outer["b"].tokens == {"outer": 6}  # b was only recorded by the outer block
    assert model.a.stats is None and model.b.stats is None


def test_record_routing_on_module_without_moe_is_harmless() -> None:
    dense = nn.Sequential(nn.Linear(2, 2))
    with record_routing(dense, "x") as stats:
        set_domain(dense, "y")
        dense(torch.randn(1, 2))
    assert stats == {}


# ------------------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_experts": 0}, "n_experts must be an integer >= 1"),
        ({"top_k": 3}, "top_k must be 1"),
        ({"n_experts": 1, "top_k": 2}, "use top_k <= n_experts"),
        ({"capacity_factor_train": 0.0}, "capacity_factor_train must be a number > 0 or None"),
        ({"capacity_factor_eval": -1.0}, "capacity_factor_eval must be a number > 0 or None"),
        ({"balance_weight": -0.1}, "balance_weight must be a finite number >= 0"),
        ({"z_loss_weight": -1e-3}, "z_loss_weight must be a finite number >= 0"),
        ({"expert_dropout": 1.0}, r"expert_dropout must be in \[0, 1\)"),
        ({"expert_dropout": -0.1}, r"expert_dropout must be in \[0, 1\)"),
    ],
)
def test_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        MoEConfig(**kwargs)  # type: ignore[arg-type]


def test_config_validate_catches_later_edits_and_round_trips() -> None:
    config = MoEConfig(n_experts=8, top_k=1, capacity_factor_eval=None, expert_dropout=0.1)
    assert MoEConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert MoEConfig.from_dict({}) == MoEConfig()
    with pytest.raises(InputError, match="unknown MoEConfig key"):
        MoEConfig.from_dict({"n_expert": 4})
    config.top_k = 5
    with pytest.raises(InputError, match="top_k"):
        config.validate()
    with pytest.raises(InputError, match="top_k"):
        MoEFeedForward(4, 8, config)
