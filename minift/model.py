"""
A small GPT in plain PyTorch, and the same GPT with a scalar head for the reward and value
models. Generating from it (the KV cache, the sampler) is minift/engine.py.

Shapes in comments use B = batch, T = new tokens this call, S = all positions the
queries may look at (cache + new), C = n_embd, H = n_head, D = C // H.

Padding convention, shared by every stage of minift:
  * training batches (pretraining, SFT) are right-padded or unpadded, so plain causal
    attention already keeps real tokens from seeing padding;
  * generation and RL batches are *left*-padded prompts followed by responses, and so are
    the reward model's and DPO's training batches (their last column is every row's last
    real token); all of them carry an `attention_mask` (B, S) with 1 for real tokens.
    The mask keeps padding out of attention, and position ids come from it
    (`positions_from_mask`), so a sequence gets the same positions whatever padding sits
    beside it. RoPE would give the same attention for shifted positions in exact arithmetic;
    the same positions give the same floats up to rounding, since the attention kernel sums
    over the padded keys too. On the CPU they are the same to the last bit when the two
    batches' widths match (PPO's minibatches keep the rollout's, so its first ratio is
    exactly 1) or differ by a multiple of 16, as PAD_MULTIPLE's lengths do (FINDINGS.md,
    "Speed and precision").
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 2048   # the scripts set it to the tokenizer's n_vocab (specials included)
    block_size: int = 256    # longest sequence (the rotary tables cover this many positions)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False       # biases in Linear/LayerNorm; off is slightly faster and no worse (nanoGPT)


def positions_from_mask(attention_mask):
    """(B, S) 0/1 mask -> (B, S) position ids counting real tokens only.
    A left-padded row [0 0 1 1 1] gets positions [0 0 0 1 2]: its first real token sits at
    position 0, exactly as if it had no padding. Every batch that carries a mask (generation,
    PPO's scoring and updates, the reward model, DPO) gets its positions here, so they can
    never disagree (a classic RLHF bug: Huang et al. 2024, "The N+ Implementation Details of
    RLHF with PPO"); unpadded and right-padded batches (pretraining, SFT) get 0..T-1, the
    same numbers."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_index(attention_mask):
    """(B, S) mask -> (B,) index of the last real token of each row (for reward heads)."""
    S = attention_mask.size(1)
    return S - 1 - attention_mask.long().flip(-1).argmax(-1)


def answer_positions(idx, assistant_token, attention_mask):
    """(B, S) ids -> (B, S) mask, 1 on the real tokens after each row's last <|assistant|>:
    the answer a reward model judges, with its <|end|>."""
    seen_later = (idx == assistant_token).long().flip(-1).cumsum(-1).flip(-1)  # cue at or after t
    return ((seen_later == 0) & attention_mask.bool()).long()


def rotary_tables(block_size, head_dim, base=10000.0):
    """cos and sin tables of rotary position embeddings (RoPE, Su et al. 2021), each
    (block_size, head_dim // 2): position p turns feature pair i by the angle p * base^(-2i/D)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2).float() / head_dim)   # (D/2,)
    angles = torch.arange(block_size).float()[:, None] * inv_freq[None, :]  # (block_size, D/2)
    return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):
    """Rotate each (first half, second half) feature pair of x (B, H, T, D) by its position's
    angle; cos and sin are (B, 1, T, D/2), or (1, 1, T, D/2) when no mask sets the
    positions. After rotating both, q . k depends on the positions only through their
    difference, which is what makes attention relative."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def attention(q, k, v, attn_mask=None, dropout_p=0.0):
    """softmax(q k^T / sqrt(D) + mask) v for (B, H, T, D) queries and (B, H, S, D) keys and
    values. attn_mask None means plainly causal: an unpadded training batch, for which the
    fused kernel takes its fastest path."""
    if torch.is_autocast_enabled("cpu"):
        # Under CPU autocast (minift.training.Runtime.autocast) attention stays fp32: the
        # products around it gain from bf16, but PyTorch's bf16 attention kernel for the CPU
        # is many times slower to backpropagate than its fp32 one (FINDINGS.md, "Speed and precision").
        with torch.autocast("cpu", enabled=False):
            return attention(q.float(), k.float(), v.float(), attn_mask, dropout_p)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None,
                                          dropout_p=dropout_p)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, rotary, attn_mask=None, cache=None, layer=0):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, H, T, D)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)  # keys are cached rotated
        # Attention keeps q, k and v for its backward pass; as a view, v would keep the whole
        # (B, T, 3C) projection alive beside the rotated q and k. A contiguous copy costs C floats
        # a token and lets the 3C go.
        v = v.contiguous()
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H, S, D)
        dropout_p = self.dropout if self.training else 0.0
        y = attention(q, k, v, attn_mask, dropout_p)  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm block (GPT-2): normalising the input of each sublayer keeps the
    residual stream an untouched sum, which trains stably without the long warmup that
    post-LayerNorm needs (Xiong et al. 2020); the scripts keep a short one for Adam (lr_at)."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, rotary, attn_mask=None, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), rotary, attn_mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config, verbose=False):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        # Rotary positions (RoPE, Su et al. 2021; LLaMA) rather than GPT-2's learned table.
        # Attention scores then depend on how far apart two tokens are, not on where they
        # sit, so what the model learns at one position holds at every other: it need not
        # learn a position table row by row, which matters at our budget (FINDINGS.md,
        # "Pretraining"). Left padding stays exact: the mask hides it, and `positions_from_mask`
        # gives a row the same angles whatever padding precedes it.
        # The tables are buffers, not parameters, and are rebuilt rather than saved.
        cos, sin = rotary_tables(config.block_size, config.n_embd // config.n_head)
        self.register_buffer("rotary_cos", cos, persistent=False)
        self.register_buffer("rotary_sin", sin, persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (Press & Wolf 2017): the output layer reuses the token embeddings.
        # It saves vocab*C parameters, a large share of a tiny model, and helps it.
        self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2 scales the init of each residual projection by 1/sqrt(2 * n_layer), since
        # 2 * n_layer of them add into the residual stream and its variance would grow.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if verbose:
            print(f"GPT: {self.num_params() / 1e6:.2f}M parameters "
                  f"({self.num_params(non_embedding=True) / 1e6:.2f}M without embeddings)")

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=False):
        n = sum(p.numel() for p in self.parameters())  # tied weights are counted once
        return n - self.wte.weight.numel() * non_embedding

    def hidden_states(self, idx, attention_mask=None, cache=None):
        """idx (B, T) -> final hidden states (B, T, C), after the last LayerNorm.
        attention_mask (B, S) covers the cached positions plus these T new ones; `cache` is an
        engine.KVCache holding the earlier positions' keys and values (generation), or None."""
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens is longer than block_size "
                             f"{self.config.block_size}")
        if attention_mask is None:
            # Positions past..past+T-1 for every row: a slice of the tables, not a gather.
            rotary = (self.rotary_cos[past:past + T][None, None], self.rotary_sin[past:past + T][None, None])
            attn_mask = None if cache is None else self._attention_mask(
                torch.ones(B, past + T, dtype=torch.bool, device=idx.device), T)
        else:
            pos = positions_from_mask(attention_mask)[:, -T:]  # (B, T)
            rotary = (self.rotary_cos[pos].unsqueeze(1), self.rotary_sin[pos].unsqueeze(1))
            attn_mask = self._attention_mask(attention_mask.bool(), T)
        # rotary: cos and sin, (B|1, 1, T, D/2)
        x = self.drop(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = block(x, rotary, attn_mask, cache, i)
        if cache is not None:
            cache.length += T
        return self.ln_f(x)

    @staticmethod
    def _attention_mask(key_mask, T):
        """(B, S) real-token mask -> (B, 1, T, S) boolean mask for the last T queries:
        query i may see key j if j is real and j <= i (causal). Each query may always
        see itself, so a padding query never has an empty row (softmax of nothing = NaN);
        its output is garbage that nothing real ever reads."""
        S = key_mask.size(1)
        q_pos = torch.arange(S - T, S, device=key_mask.device).view(T, 1)
        k_pos = torch.arange(S, device=key_mask.device).view(1, S)
        causal = k_pos <= q_pos                                  # (T, S)
        mask = causal & key_mask[:, None, :]                     # (B, T, S)
        mask = mask | (k_pos == q_pos)                           # self is always visible
        return mask.unsqueeze(1)                                 # (B, 1, T, S)

    def forward(self, idx, targets=None, attention_mask=None, cache=None, ignore_index=-1):
        """Without targets: (logits (B, T, V), None).
        With targets (B, T): (logits, loss), loss the mean cross-entropy over the positions whose
        target is not ignore_index (prompt tokens in SFT, padding).
        On the CPU the output layer only runs where a target is scored, and logits are those
        rows, (N, V): with a vocabulary many times the width it is a large share of a tiny
        model's compute, and SFT scores only the answers (FINDINGS.md, "Speed and precision",
        smaller speed-ups). Elsewhere logits are every position's, (B*T, V): picking rows by
        a mask gives a tensor whose size depends on the data, which makes a GPU wait for the
        count and splits a torch.compile graph in two, while a GPU has compute to spare."""
        x = self.hidden_states(idx, attention_mask, cache)  # (B, T, C)
        if targets is None:
            return self.lm_head(x), None
        if x.device.type == "cpu" and not torch.compiler.is_compiling():
            scored = targets != ignore_index                # (B, T)
            logits = self.lm_head_rows(x[scored])           # (N, V)
            return logits, F.cross_entropy(logits.float(), targets[scored])
        logits = self.lm_head(x).flatten(0, 1)              # (B*T, V)
        return logits, F.cross_entropy(logits.float(), targets.flatten(), ignore_index=ignore_index)

    def lm_head_rows(self, h):
        """The output layer on some rows of hidden states, (N, C) -> (N, V). The rows are
        zero-padded to a multiple of ROW_MULTIPLE for the product and cut back after: N
        changes with every batch, and a new shape of product costs a new oneDNN kernel under
        CPU autocast (see PAD_MULTIPLE)."""
        n = h.size(0)
        return self.lm_head(F.pad(h, (0, 0, 0, -n % ROW_MULTIPLE)))[:n]


# SFT's and the reward model's batches are padded to a multiple of this many tokens. Under
# CPU autocast, oneDNN runs the bf16 products and builds a kernel for each new matrix shape
# and keeps only so many. SFT's many conversation lengths, times each product's shapes,
# overflow that store and rebuild kernels at every step; a few lengths cost a little padding
# instead, and nothing measurable in fp32 (FINDINGS.md, "Speed and precision").
PAD_MULTIPLE = 16
ROW_MULTIPLE = 64   # the same for the rows that the output layer scores (GPT.lm_head_rows)


def padded_length(n, block_size):
    """n rounded up to a multiple of PAD_MULTIPLE, but at most block_size (and at least n)."""
    return max(n, min(-(-n // PAD_MULTIPLE) * PAD_MULTIPLE, block_size))


def pad_left(seqs, pad_token, device=None, length=None):
    """Lists of ids -> (ids (B, L), mask (B, L)), left-padded so that every row's last
    token sits in the last column, where generation appends the next one.
    L = max(longest sequence, length)."""
    L = max(max(map(len, seqs)), length or 0)
    ids = torch.full((len(seqs), L), pad_token, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s) == 0:
            raise ValueError("cannot generate from an empty prompt")
        ids[i, L - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, L - len(s):] = 1
    return ids.to(device), mask.to(device)


class ScalarModel(nn.Module):
    """The GPT with a scalar head on its hidden states: one number per position.
    A value model (the PPO critic) uses every position (`forward`). A reward model reads
    the head at the last real token (`reward`), and adds likelihood_weight times the mean
    log-probability that its own LM head gives the answer's tokens (0 gives InstructGPT's
    reward model exactly). Why the second term: a sampled answer that the model finds
    unlikely is usually one that went wrong (a garbled word), which the head would have to
    learn from pairs; the head learns what the likelihood misses (FINDINGS.md, "The reward
    model", the likelihood term). That an LM's log-probabilities can serve as a reward is DPO's
    observation (Rafailov et al. 2023, relative to a reference model); the mean
    log-probability without a reference, used here beside the head, is SimPO's form (Meng
    et al. 2024)."""

    def __init__(self, config, head_std=None):
        super().__init__()
        self.gpt = GPT(config)
        self.head = nn.Linear(config.n_embd, 1)
        # OpenAI's lm-human-preferences (Ziegler et al. 2019) initialises the reward head
        # N(0, 1/sqrt(C+1)) and the value head at zero; head_std=0 gives the latter.
        std = 1 / math.sqrt(config.n_embd + 1) if head_std is None else head_std
        nn.init.normal_(self.head.weight, std=std) if std > 0 else nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        # Reward normalisation (Ziegler et al. 2019; InstructGPT fits a bias alone): score =
        # gain * raw + bias, fitted after training so that the SFT model's answers in the
        # training pairs score mean 0, std 1. Buffers, so they travel in the state dict and
        # the checkpoint.
        self.register_buffer("gain", torch.ones(()))
        self.register_buffer("bias", torch.zeros(()))
        self.register_buffer("likelihood_weight", torch.zeros(()))  # set by train_reward.py

    def forward(self, idx, attention_mask=None, answer_mask=None):
        """Without answer_mask: (B, S) -> (B, S), the raw scalar at every position (a critic's
        values). With answer_mask (B, S), 1 on the tokens of the answer being judged (and its
        <|end|>): (B,) raw rewards, the head read at each row's last real token plus
        likelihood_weight x the answer tokens' mean log-probability. Reading the head at a
        padding position instead is the classic reward-model bug (Huang et al. 2024)."""
        h = self.gpt.hidden_states(idx, attention_mask)                     # (B, S, C)
        values = self.head(h).squeeze(-1)                                   # (B, S)
        if answer_mask is None:
            return values
        mask = attention_mask if attention_mask is not None else torch.ones_like(idx)
        raw = values.gather(1, last_token_index(mask).unsqueeze(1)).squeeze(1)  # (B,)
        if self.likelihood_weight != 0:
            raw = raw + self.likelihood_weight * self.mean_logprob(h, idx, answer_mask)
        return raw

    def mean_logprob(self, h, idx, answer_mask):
        """(B,) mean log p(token | tokens before it) over each row's answer tokens, from the
        hidden states h (B, S, C). Position t-1 predicts token t, and the LM head runs only
        at the positions that predict an answer token, on every device (GPT.forward does so
        on the CPU only; here a GPU waits for the count of rows once a batch)."""
        predicts = answer_mask[:, 1:].bool()                                # (B, S-1)
        logits = self.gpt.lm_head_rows(h[:, :-1][predicts]).float()         # (N, V)
        logp = logits.log_softmax(-1).gather(1, idx[:, 1:][predicts].unsqueeze(1)).squeeze(1)  # (N,)
        row = predicts.nonzero()[:, 0]                                      # (N,) the row of each
        total = torch.zeros(idx.size(0), device=h.device).index_add(0, row, logp)
        return total / predicts.sum(1).clamp(min=1)

    def reward(self, idx, attention_mask, answer_mask, normalized=True):
        """(B, S) -> (B,) rewards (see forward), normalised so that SFT answers score mean 0
        and std 1 (gain and bias are fitted by train_reward.py)."""
        raw = self(idx, attention_mask, answer_mask)
        return self.normalize(raw) if normalized else raw

    def normalize(self, raw):
        """Raw scores -> rewards on the scale PPO sees: gain * raw + bias."""
        return self.gain * raw + self.bias
