"""The two-tower model: shared id embeddings, an item tower, a user encoder and (hybrid) an online head.

Follows the Phoenix retrieval model (seed 003). ``TwoTower`` only composes the parts and exposes what its
callers need:

* :meth:`~TwoTower.encode_items` — candidate tower, for training negatives, the export and evaluation;
* :meth:`~TwoTower.encode_user` — a user with (hybrid) or without (unsplit) the request context;
* :meth:`~TwoTower.encode_state` / :meth:`~TwoTower.encode_online` — the hybrid split: the offline state the
  refresh job caches in the feature store, and the online head the service runs over it (an unsplit tower's
  cached state is its user vector);
* :meth:`~TwoTower.training_queries` — every training target of a window batch in one pass.

Unsplit towers serve the user vector the refresh job cached (or run the encoder over the events a request
sends, for a user with no cached vector). Hybrid towers (``online_head``, seed 001) cache the
encoder's state and run only the small online head per request. No index lives in here.
"""

from __future__ import annotations

import torch
from torch import nn

from ..features.inputs import Context, ItemInputs, Snapshots, UserInputs
from .config import ModelConfig
from .item_tower import ItemTower
from .layers import Embeddings, prefix_vectors, score_vectors
from .online import OnlineHead
from .user_encoder import UserEncoder, gather_rows

# State-dict names of checkpoints written before the model was split into parts (old prefix -> new prefix).
# Applied on every ``load_state_dict``, so those checkpoints keep loading (and keep their model version: the
# version hashes the files on disk, which are never rewritten).
LEGACY_PREFIXES = {
    "item_emb.": "embed.item.",
    "author_emb.": "embed.author.",
    "user_emb.": "embed.user.",
    "feat_emb.": "embed.feat.",
    "cand_mlp.": "item_tower.mlp.",
    "action_proj.": "user_encoder.action_proj.",
    "surface_emb.": "user_encoder.surface_emb.",
    "hist_proj.": "user_encoder.hist_proj.",
    "user_proj.": "user_encoder.user_proj.",
    "pos_emb.": "user_encoder.pos_emb.",
    "gap_emb.": "user_encoder.gap_emb.",
    "blocks.": "user_encoder.blocks.",
    "ln_f.": "user_encoder.ln_f.",
    "subject_proj.": "head.subject_proj.",
}


def rename_legacy_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` with pre-split key names mapped to today's (other keys unchanged)."""
    out = {}
    for key, value in state_dict.items():
        old = next((p for p in LEGACY_PREFIXES if key.startswith(p)), None)
        out[LEGACY_PREFIXES[old] + key[len(old) :] if old else key] = value
    return out


def _legacy_keys_hook(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """``load_state_dict`` pre-hook: rename pre-split keys in place (the hook's contract)."""
    renamed = rename_legacy_keys({k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)})
    for k in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[k]
    state_dict.update({prefix + k: v for k, v in renamed.items()})


class TwoTower(nn.Module):
    """User tower + candidate tower: unit vectors [B, D] and [N, D] whose dot product is the score."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        # Construction order = RNG draw order (unchanged since before the split: a seed gives the same model).
        self.embed = Embeddings(cfg)
        self.item_tower = ItemTower(cfg, self.embed.item_dim)
        self.user_encoder = UserEncoder(cfg, self.embed.item_dim)
        self.head = OnlineHead(cfg, self.embed.item_dim) if cfg.online_head else None
        self.user_encoder.init_tables()
        self.register_load_state_dict_pre_hook(_legacy_keys_hook)

    # --- candidate tower ---------------------------------------------------------------------------------
    def encode_items(self, items: ItemInputs, dim: int | None = None) -> torch.Tensor:
        """Candidate tower: ItemInputs of [N, ·] -> unit vectors [N, D] (``dim``: the first ``dim``
        coordinates, unit again: a Matryoshka prefix, [N, dim]). In training, ``id_dropout`` of the items are
        read without their id hashes (their content only)."""
        p = self.cfg.id_dropout
        if self.training and p > 0:
            keep = torch.rand(items.item.shape[:-1], device=items.item.device) >= p  # [N]
            items = ItemInputs(items.item * keep[..., None], items.author, items.feat, items.text)
        v = self.item_tower(self.embed.items(items), items.text)
        return v if dim is None else prefix_vectors(v, dim, self.cfg.similarity)

    # --- user tower --------------------------------------------------------------------------------------
    def _item_vec(self) -> ItemTower | None:
        """The item tower when history tokens take their items' candidate vectors (``tied_input``)."""
        return self.item_tower if self.cfg.tied_input else None

    def user_vectors(self, raw: torch.Tensor) -> torch.Tensor:
        """Encoder outputs [..., D] -> the user vectors scored against items: unit (cosine) or raw (dot)."""
        return score_vectors(raw, self.cfg.similarity)

    def encode_user(self, u: UserInputs, ctx: Context | None = None, dim: int | None = None) -> torch.Tensor:
        """User tower -> unit vectors [B, D] (``dim``: a Matryoshka prefix, unit again, [B, dim]).

        Unsplit: the output after the whole history. Hybrid (``online_head``): the encoder's state after the
        history, then the online head over ``ctx`` (required: the request's time, surface and recent events).
        """
        if self.head is None:
            seq = self.user_vectors(self.user_encoder(u, self.embed, self._item_vec())[0])  # [B, L, D]
            last = (u.length + self.user_encoder.offset - 1).clamp_min(0)
            v = seq[torch.arange(seq.shape[0], device=seq.device), last]
        elif ctx is None:
            raise ValueError("this model has an online head: pass the request context (Featurizer.request)")
        else:
            v = self.encode_online(self.encode_state(u), ctx)
        return v if dim is None else prefix_vectors(v, dim, self.cfg.similarity)

    def encode_state(self, u: UserInputs) -> torch.Tensor:
        """Offline encoder: the whole history -> the state cached in the feature store, [B, T, D]
        (``cfg.cached_state_shape``: an unsplit tower caches its user vector, [B, 1, D])."""
        if self.head is None:
            return self.encode_user(u)[:, None]
        raw = self.user_encoder(u, self.embed, self._item_vec())[0]
        return self.user_encoder.states_at(raw, torch.arange(raw.shape[0], device=raw.device), u.length)

    def encode_online(self, state: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Online head: cached state [B, T, D] (zero rows = missing) + request context -> unit vectors [B, D].

        ``ctx.events`` holds the user's events since the state's snapshot ([B, C, ·], see ``Context``).
        """
        self._head()  # a clear error for unsplit models before anything else
        return self._online(state, ctx, self.event_tokens(ctx.events), ctx.events.length)

    def add_subject(self, request: torch.Tensor, subject: ItemInputs) -> torch.Tensor:
        """``request`` [B, D] + the projected subject item of each row that has one (all-zero ids = none)."""
        has = (subject.item[:, 0] > 0)[:, None].to(request.dtype)
        return self._head().add_subject(request, self.embed.items(subject), has)

    def _head(self) -> OnlineHead:
        if self.head is None:
            raise ValueError("this model has no online head; train it with model.online_head = true")
        return self.head

    def event_tokens(self, ev: UserInputs) -> torch.Tensor:
        """Tokens [B, C, D] of events: the online head's context (the serving head's trace calls it)."""
        return self.user_encoder.event_tokens(ev, self.embed, self._item_vec())

    def _online(self, state: torch.Tensor, ctx: Context, tokens: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """The head over state [B, T, D], context event ``tokens`` [B, C, D] (``length`` int64 [B] valid)."""
        head = self._head()
        request = head.request(ctx.surface, ctx.hour, ctx.weekday, ctx.since_last)
        if bool((ctx.subject.item > 0).any()):  # most requests have none: skip the projection
            request = self.add_subject(request, ctx.subject)
        return head(state, tokens, length, request)

    # --- training ----------------------------------------------------------------------------------------
    def training_queries(
        self, inputs: UserInputs, rows: torch.Tensor, snapshots: Snapshots | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """User vectors of every training target of a window batch: (queries [T, D], target rows int64 [T]).

        ``inputs``: windows [B, S]; ``rows``: int64 [B, S] the dataset event row at each position (-1 = pad).
        Causal: one pass, the query for position ``j`` is the output that has seen history ``< j``. Hybrid
        (``snapshots`` given, one per valid position): the state at each target's snapshot plus the online
        head over its context events, their tokens gathered from the same pass, exactly as served.
        Bidirectional: one target per window, its last event, the history all events before it.
        """
        if not self.cfg.causal:
            return self._last_event_queries(inputs, rows)
        raw, ev = self.user_encoder(inputs, self.embed, self._item_vec())  # [B, L, D], [B, S, D]
        if snapshots is not None:
            return self._head_queries(raw, ev, rows, snapshots)
        return self._encoder_queries(raw, rows)

    def hybrid_training_queries(
        self, inputs: UserInputs, rows: torch.Tensor, snapshots: Snapshots
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """One encoder pass, two sets of queries: the online head's at ``snapshots`` (as served) and the
        encoder's own at every position (the unsplit tower's). Each is (queries [T, D], target rows int64 [T]).

        The encoder's queries give the offline encoder a direct training signal at every position, at the
        cost of one normalisation; the head's may then run on a sample of the targets (``Snapshots.position``).
        """
        raw, ev = self.user_encoder(inputs, self.embed, self._item_vec())
        return self._head_queries(raw, ev, rows, snapshots), self._encoder_queries(raw, rows)

    def _head_queries(
        self, raw: torch.Tensor, ev: torch.Tensor, rows: torch.Tensor, snapshots: Snapshots
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = snapshots.batch
        state = self.user_encoder.states_at(raw, b, snapshots.n_events)  # [T, T_state, D]
        tokens = gather_rows(ev, b[:, None], snapshots.ctx_pos)  # [T, C, D]: the context events' tokens
        target = rows[rows >= 0] if snapshots.position is None else rows[b, snapshots.position]
        return self._online(state, snapshots.ctx, tokens, snapshots.ctx_len), target

    def _encoder_queries(self, raw: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The unsplit tower's query at every valid window position (the output that has seen history < j)."""
        seq = self.user_vectors(raw)
        B, S = rows.shape
        j = torch.arange(S, device=rows.device)
        valid = rows >= 0
        if self.user_encoder.offset == 0:
            valid &= j[None, :] >= 1  # without a user token the first event has no history at all
        out_pos = (j + self.user_encoder.offset - 1).clamp_min(0).expand(B, S)
        q = seq[torch.arange(B, device=seq.device)[:, None].expand(B, S)[valid], out_pos[valid]]
        return q, rows[valid]

    def _last_event_queries(self, inputs: UserInputs, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bidirectional encoder: the history is all but the last event, the last event is the target.

        The history is a masked copy; ``inputs`` is left as it was.
        """
        last = (inputs.length - 1).clamp_min(0)  # [B]
        target = rows[torch.arange(len(rows), device=rows.device), last]
        keep = torch.arange(rows.shape[1], device=rows.device)[None, :] < last[:, None]  # [B, S]
        h = inputs.history
        history = UserInputs(
            user=inputs.user,
            user_feat=inputs.user_feat,
            history=ItemInputs(h.item * keep[..., None], h.author * keep[..., None], h.feat * keep[..., None]),
            actions=inputs.actions * keep[..., None],
            surface=inputs.surface * keep,
            gap=inputs.gap,  # read only at valid positions
            length=last,
        )
        q = self.encode_user(history)
        ok = (last > 0) if not self.cfg.user_token else torch.ones_like(last, dtype=torch.bool)
        return q[ok], target[ok]
