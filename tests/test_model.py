import pytest
import torch

from minift.model import (GPT, GPTConfig, ScalarModel, answer_positions, apply_rotary, attention, last_token_index,
                          pad_left, padded_length, positions_from_mask, rotary_tables)

CFG = GPTConfig(vocab_size=97, block_size=64, n_layer=2, n_head=2, n_embd=32)


def make_model(seed=0, cls=GPT):
    torch.manual_seed(seed)
    return cls(CFG).eval()


def test_shapes_and_loss():
    model = make_model()
    x = torch.randint(0, 97, (3, 10))
    logits, loss = model(x)
    assert logits.shape == (3, 10, 97) and loss is None
    y = torch.randint(0, 97, (3, 10))
    y[:, :4] = -1   # ignored positions
    scored_logits, loss = model(x, y)
    assert torch.allclose(scored_logits, logits[:, 4:].reshape(-1, 97), atol=1e-6)  # only scored positions
    manual = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, 97), y[:, 4:].reshape(-1))
    assert torch.allclose(loss, manual, atol=1e-6)
    # an untrained model predicts roughly uniformly: loss near log(V)
    assert abs(loss.item() - torch.log(torch.tensor(97.0)).item()) < 0.5


def test_cpu_autocast_keeps_attention_fp32_and_loss_close():
    """Under CPU bf16 autocast (Runtime.autocast on a CPU with AMX or AVX512-BF16) the
    products run in bf16, attention in fp32; the loss stays close to fp32's and covers the
    same positions."""
    model = make_model()
    x = torch.randint(0, 97, (2, 12))
    y = x.clone()
    y[:, :5] = -1
    q, k, v = torch.randn(3, 2, 2, 12, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attended = attention(q, k, v)
        logits, loss = model(x, y)
    assert attended.dtype == torch.float32 and torch.allclose(attended, attention(q, k, v), atol=1e-6)
    assert logits.dtype == torch.bfloat16 and logits.shape == (2 * 7, 97)
    _, loss_fp32 = model(x, y)
    assert abs(loss.item() - loss_fp32.item()) < 0.02


def test_padded_length_rounds_up_to_16_within_the_block():
    assert [padded_length(n, 64) for n in (1, 16, 17, 50, 64)] == [16, 16, 32, 64, 64]
    assert padded_length(50, 60) == 60   # never past block_size


def test_weight_tying_and_residual_init():
    """Every residual projection (attention's and the MLP's, in every block) starts at
    std 0.02 / sqrt(2 n_layer), the other matrices at 0.02; the tied weight counts once."""
    model = make_model()
    assert model.lm_head.weight is model.wte.weight
    for name, p in model.named_parameters():
        if p.dim() == 2:
            std = 0.02 / (2 * CFG.n_layer) ** 0.5 if name.endswith("c_proj.weight") else 0.02
            assert abs(p.std().item() - std) < 0.003, name
    V, C, L = CFG.vocab_size, CFG.n_embd, CFG.n_layer
    assert model.num_params() == V * C + L * (12 * C * C + 2 * C) + C   # no biases: LayerNorm gains only


def test_rotary_turns_each_half_pair_by_position_times_its_frequency():
    """RoPE (Su et al. 2021): position p turns the pair (i, i + D/2) by p * 10000^(-2i/D), a
    rotation, so norms are kept and q . k depends only on how far apart q and k are."""
    D = 8
    cos, sin = rotary_tables(32, D)
    angles = torch.arange(32, dtype=torch.float64)[:, None] * 10000.0 ** (-torch.arange(0, D, 2) / D)
    assert torch.allclose(cos.double(), angles.cos(), atol=1e-6)
    assert torch.allclose(sin.double(), angles.sin(), atol=1e-6)

    def at(x, p):   # x (D,) rotated to position p
        return apply_rotary(x.view(1, 1, 1, D), cos[p].view(1, 1, 1, -1), sin[p].view(1, 1, 1, -1)).view(D)
    e1 = torch.eye(D)[1]   # feature 1 pairs with feature 1 + D/2
    assert torch.allclose(at(e1, 3), cos[3, 1] * e1 + sin[3, 1] * torch.eye(D)[1 + D // 2], atol=1e-6)
    torch.manual_seed(0)
    q, k = torch.randn(2, D)
    assert torch.allclose(at(q, 7).norm(), q.norm(), atol=1e-5)
    dots = [at(q, m) @ at(k, n) for m, n in ((5, 2), (20, 17), (3, 0))]   # all 3 apart
    assert torch.allclose(torch.stack(dots), dots[0].expand(3), atol=1e-5)


def test_attention_is_softmax_of_scores_over_sqrt_head_dim():
    """attention() against the textbook formula: plainly causal without a mask, and with a
    (B, 1, T, S) mask for the last T queries of S positions (a KV cache's)."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 6, 16)
    allowed = torch.ones(6, 6).tril().bool()

    def by_hand(q, k, v, allowed):
        return (q @ k.mT / 16 ** 0.5).masked_fill(~allowed, float("-inf")).softmax(-1) @ v
    assert torch.allclose(attention(q, k, v), by_hand(q, k, v, allowed), atol=1e-6)
    assert torch.allclose(attention(q[:, :, -2:], k, v, allowed[-2:].expand(2, 1, 2, 6)),
                          by_hand(q[:, :, -2:], k, v, allowed[-2:]), atol=1e-6)


def test_causality():
    """Changing a future token never changes the logits of earlier positions."""
    model = make_model()
    x = torch.randint(0, 97, (1, 16))
    x2 = x.clone()
    x2[0, 10:] = (x2[0, 10:] + 1) % 97
    a, _ = model(x)
    b, _ = model(x2)
    assert torch.allclose(a[0, :10], b[0, :10], atol=1e-6)
    assert not torch.allclose(a[0, 10:], b[0, 10:])


def test_left_padding_is_exact():
    """A sequence scores the same alone or left-padded beside a longer one."""
    model = make_model()
    seq = [5, 6, 7, 8]
    alone, _ = model(torch.tensor([seq]))
    ids, mask = pad_left([seq, list(range(1, 12))], pad_token=0)
    padded, _ = model(ids, attention_mask=mask)
    assert torch.allclose(alone[0], padded[0, -4:], atol=1e-5)
    assert positions_from_mask(mask)[0].tolist() == [0] * 8 + [1, 2, 3]
    # every query sees at least itself: a padding query's empty row would give NaN on some
    # attention kernels (the CPU's gives 0, so the logits above cannot show it)
    assert GPT._attention_mask(mask.bool(), mask.size(1)).any(-1).all()


CUE = 6  # stands for <|assistant|> in these tests: the answer is what follows its last use


def test_reward_is_the_raw_score_under_the_fitted_gain_and_bias():
    model = make_model(cls=ScalarModel)
    model.gain.fill_(2.5)
    model.bias.fill_(-0.75)
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.ones_like(ids)
    raw = model.reward(ids, mask, answer_positions(ids, CUE, mask), normalized=False)
    assert torch.allclose(model.reward(ids, mask, answer_positions(ids, CUE, mask)), 2.5 * raw - 0.75)


def test_scalar_model_reads_last_real_token_and_ignores_padding():
    model = make_model(cls=ScalarModel)
    model.likelihood_weight.fill_(0.5)  # the answer's likelihood must not see the padding either
    seqs = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8]]
    ids, mask = pad_left(seqs, pad_token=0)
    batched = model.reward(ids, mask, answer_positions(ids, CUE, mask))
    for i, s in enumerate(seqs):
        t = torch.tensor([s])
        alone = model.reward(t, torch.ones_like(t), answer_positions(t, CUE, torch.ones_like(t)))
        assert torch.allclose(alone, batched[i:i + 1], atol=1e-5)
    # right padding as well: the reward comes from the last real token, not the pad
    right, right_mask = torch.tensor([[5, 6, 7, 0, 0]]), torch.tensor([[1, 1, 1, 0, 0]])
    assert torch.allclose(model.reward(right, right_mask, answer_positions(right, CUE, right_mask)),
                          batched[0:1], atol=1e-5)
    assert last_token_index(torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])).tolist() == [2, 3]


def test_answer_positions_follow_the_last_cue():
    ids = torch.tensor([[0, 0, 6, 7, 8], [6, 9, 6, 7, 0], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    assert answer_positions(ids, CUE, mask).tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 1, 0], [1, 1, 1, 1, 1]]


def test_reward_adds_the_weighted_mean_logprob_of_the_answer():
    """reward = head at the last token + weight x mean log p(answer token | earlier tokens),
    checked against the GPT's own logits (the naive path)."""
    model = make_model(cls=ScalarModel)
    ids = torch.tensor([[1, 2, CUE, 7, 8, 9]])
    ones, answer = torch.ones_like(ids), answer_positions(ids, CUE, torch.ones_like(ids))
    with torch.no_grad():
        head_only = model.reward(ids, ones, answer, normalized=False)
        model.likelihood_weight.fill_(2.0)
        both = model.reward(ids, ones, answer, normalized=False)
        logp = model.gpt(ids)[0].log_softmax(-1)[0]                      # (S, V)
    by_hand = (logp[2, 7] + logp[3, 8] + logp[4, 9]) / 3                 # tokens 7, 8, 9 of the answer
    assert head_only.item() == pytest.approx(model.head(model.gpt.hidden_states(ids))[0, -1].item(), abs=1e-5)
    assert (both - head_only).item() == pytest.approx(2.0 * by_hand.item(), abs=1e-4)


def test_compiled_loss_is_one_graph_and_matches_eager():
    """torch.compile captures the whole loss in one graph: no graph break, so the GPU runs one
    compiled kernel sequence (picking scored rows by a mask would break it: their count depends
    on the data). The compiled path's loss over every position's logits, ignored positions
    included, equals the CPU's loss over the scored rows only."""
    model = make_model().train()
    x = torch.randint(0, 97, (2, 16))
    y = x.clone()
    y[:, :3] = -1

    def loss_of(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x, y)[1]
    explained = torch._dynamo.explain(loss_of)(x, y)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager")  # traced by dynamo, run eagerly: fast to build
    logits, loss = compiled(x, y)
    assert logits.shape == (2 * 16, 97)
    assert torch.allclose(loss, model(x, y)[1], atol=1e-6)


def test_attention_keeps_no_view_of_the_qkv_projection_for_backward():
    """Autograd keeps what attention's backward needs: the rotated q and k, and v. v must not be
    a view of the (B, T, 3C) projection, or the whole projection stays in memory beside the
    rotated copies until the backward pass (minift.model.CausalSelfAttention)."""
    model = make_model().train()
    attn = model.blocks[0].attn
    outputs = []
    handle = attn.c_attn.register_forward_hook(lambda module, args, out: outputs.append(out))
    saved = []

    def pack(t):
        saved.append(t.untyped_storage().data_ptr())
        return t
    x = torch.randn(2, 16, CFG.n_embd, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = attn(x, (model.rotary_cos[:16][None, None], model.rotary_sin[:16][None, None]))
    handle.remove()
    assert out.shape == x.shape and saved   # the hooks saw attention's saved tensors
    assert outputs[0].untyped_storage().data_ptr() not in saved
