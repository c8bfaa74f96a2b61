"""Dataset arrays -> model inputs: bucketed hashes, multi-hot actions, time-gap buckets, padded histories.

The featurizer owns the corpus tables (dense item index -> hashed features); the model sees only hashes, so
an unseen id still embeds. Everything is vectorised NumPy gathers; no per-event Python loop.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from ..data.dataset import SequenceData
from ..errors import ArtifactError, ConfigError
from ..hashing import to_buckets
from ..layout import PROTOCOLS
from .clock import clock_features, gap_buckets
from .inputs import Context, ItemInputs, UserInputs


class FeatureConfig(Protocol):
    """The model-config fields the featurizer reads (``twotower.model.ModelConfig`` has them all)."""

    num_hashes: int  # H: hashes per id kept from the dataset's
    item_buckets: int
    author_buckets: int
    user_buckets: int
    feature_buckets: int
    num_actions: int  # A: bits of the action multi-hot
    time_buckets: int
    max_len: int  # S: history length the user tower reads
    context_len: int  # C: events since the snapshot the online head reads
    online_head: bool
    text_dim: int  # E of the item text vectors the candidate tower reads (0 = none)
    semantic_ids: bool  # add the dataset's semantic-ID prefix tokens to the item features
    codebook: str  # the codebook version the model was trained with ("" = none)


def check_protocol(protocol: str) -> None:
    """A ConfigError unless ``protocol`` is one of :data:`~twotower.layout.PROTOCOLS`."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown evaluation protocol {protocol!r}; use one of {PROTOCOLS}", field="protocol")


def _trim(feat: np.ndarray) -> np.ndarray:
    """Drop trailing all-padding feature columns (saves work for datasets with few features)."""
    used = int((feat > 0).sum(1).max()) if feat.size else 0
    return feat[:, : max(used, 1)]


def _semantic_id_hashes(data: SequenceData, cfg: FeatureConfig) -> np.ndarray | None:
    """uint64 [N, L] hashed semantic-ID prefix tokens, when the model reads them; refuses another codebook."""
    from ..data.semantic_ids import prefix_hashes

    want = getattr(cfg, "codebook", "") or ""
    have = data.codebook_version or ""
    if not getattr(cfg, "semantic_ids", False) or not (want or have):
        return None
    if want != have:
        raise ArtifactError(
            f"the model was trained with codebook {want or 'none'}, the dataset {data.root} has {have or 'none'}: "
            "semantic IDs from another codebook mean other items. Use the dataset the model was trained on, or "
            "retrain on this one"
        )
    return prefix_hashes(np.asarray(data.item_sid)[:, :-1].astype(np.int64))


def _text_table(data: SequenceData, cfg: FeatureConfig) -> np.ndarray | None:
    """float16 [N, E] item text vectors when the model reads them (``text_dim`` > 0; as stored, converted per
    batch); a clear error when the dataset has none or another width."""
    want = getattr(cfg, "text_dim", 0)
    if not want:
        return None
    if data.text_dim != want:
        raise ArtifactError(
            f"the model reads {want}-dim item text vectors, the dataset {data.root} has "
            f"{data.text_dim or 'none'}; prepare it with the same text (--text) and encoder"
        )
    return np.asarray(data.item_text)


class Featurizer:
    """Builds :class:`ItemInputs` / :class:`UserInputs` for a dataset under a model config."""

    def __init__(self, data: SequenceData, cfg: FeatureConfig):
        H = cfg.num_hashes
        if H > data.item_hash.shape[1]:
            raise ConfigError(
                f"model wants {H} hashes but the dataset was prepared with {data.item_hash.shape[1]}; "
                "re-run `twotower prepare --num-hashes` or lower model.num_hashes"
            )
        self.data, self.cfg = data, cfg
        self.item_hash = to_buckets(data.item_hash[:, :H], cfg.item_buckets)
        if getattr(cfg, "id_dropout", 0.0) > 0 and data.item_cold is not None:
            # a model trained to place items without their id reads the items no model trained on by content
            self.item_hash[np.asarray(data.item_cold).astype(bool)] = 0
        self.item_author = to_buckets(data.item_author_hash[:, :H], cfg.author_buckets)
        feat = _trim(data.item_feat_hash)
        sid = _semantic_id_hashes(data, cfg)
        if sid is not None:  # the code prefixes are item feature tokens like any other
            feat = np.concatenate([feat, sid], axis=1)
        self.item_feat = to_buckets(feat, cfg.feature_buckets)
        self.item_text = _text_table(data, cfg)
        self.user_hash = to_buckets(data.user_hash[:, :H], cfg.user_buckets)
        self.user_feat = to_buckets(_trim(data.user_feat_hash), cfg.feature_buckets)
        self.num_actions = cfg.num_actions
        self._bits = np.arange(max(cfg.num_actions, 1), dtype=np.uint8)

    def items(self, idx: np.ndarray | None = None) -> ItemInputs:
        """Item inputs for dense item indices ``idx`` [N] (all items when None)."""
        sl = slice(None) if idx is None else idx
        return ItemInputs(
            torch.from_numpy(self.item_hash[sl]),
            torch.from_numpy(self.item_author[sl]),
            torch.from_numpy(self.item_feat[sl]),
            None if self.item_text is None else torch.from_numpy(self.item_text[sl].astype(np.float32)),
        )

    def users(self, user: np.ndarray, start: np.ndarray, end: np.ndarray, pad_to: int | None = None) -> UserInputs:
        """Histories = events ``start[b] .. end[b]-1`` of user ``user[b]``, right-padded to the longest.

        user, start, end: int64 [B] (event rows, ``start <= end``). Returns UserInputs with S = max length.
        """
        d = self.data
        length = (end - start).astype(np.int64)
        S = int(pad_to if pad_to is not None else max(int(length.max(initial=0)), 1))
        pos = start[:, None] + np.arange(S)[None, :]  # [B, S]
        valid = np.arange(S)[None, :] < length[:, None]
        rows = np.where(valid, pos, 0)
        item = d.event_item[rows]
        hist_item = np.where(valid[..., None], self.item_hash[item], 0)
        hist_author = np.where(valid[..., None], self.item_author[item], 0)
        hist_feat = np.where(valid[..., None], self.item_feat[item], 0)
        actions = ((d.event_actions[rows][..., None] >> self._bits) & 1).astype(np.float32)
        actions *= valid[..., None]
        surface = np.where(valid, d.event_surface[rows], 0).astype(np.int64)
        first_of_user = d.user_offsets[user][:, None]
        prev = np.maximum(rows - 1, 0)
        gap = np.where((rows > first_of_user) & valid, d.event_ts[rows] - d.event_ts[prev], 0)
        return UserInputs(
            user=torch.from_numpy(self.user_hash[user]),
            user_feat=torch.from_numpy(self.user_feat[user]),
            history=ItemInputs(torch.from_numpy(hist_item), torch.from_numpy(hist_author), torch.from_numpy(hist_feat)),
            actions=torch.from_numpy(actions),
            surface=torch.from_numpy(surface),
            gap=torch.from_numpy(gap_buckets(gap, self.cfg.time_buckets)),
            length=torch.from_numpy(length),
        )

    def histories_before(self, user: np.ndarray, target_row: np.ndarray) -> UserInputs:
        """The last ``max_len`` events strictly before each target row: what the user tower sees at serving."""
        start = np.maximum(self.data.user_offsets[user], target_row - self.cfg.max_len)
        return self.users(user, start, target_row)

    def request_features(
        self,
        user: np.ndarray,
        target_row: np.ndarray,
        subject_row: np.ndarray | None = None,
        protocol: str = "request_time",
        strict_rows: np.ndarray | None = None,
    ) -> Context:
        """The request part of the context (no events) for requests at ``target_row`` [B].

        ``protocol`` (see :data:`PROTOCOLS`): ``request_time`` takes the request's time and surface from the
        target event (a live request knows when it arrives and where); ``strict`` takes nothing from it: the
        request time is the last history event's (``since_last`` = 0) and the surface is unknown (0).
        ``strict_rows`` bool [B] overrides ``protocol`` per row (training mixes both).
        ``subject_row`` [B] (-1 = none) names the event whose item is the request's subject.
        """
        d = self.data
        strict = self._strict_rows(len(user), protocol, strict_rows)
        ts, prev_ts, has_prev = self._times(user, target_row, strict)
        since = np.where(has_prev, ts - prev_ts, 0)
        surface = np.where(strict, 0, d.event_surface[target_row]).astype(np.int64)
        hour, weekday = clock_features(ts)
        if subject_row is None:
            subject_row = np.full(len(user), -1)
        keep = torch.from_numpy(subject_row >= 0)[:, None]
        subject = self.items(d.event_item[np.maximum(subject_row, 0)].astype(np.int64))
        return Context(
            events=None,
            surface=torch.from_numpy(surface),
            hour=torch.from_numpy(hour),
            weekday=torch.from_numpy(weekday),
            since_last=torch.from_numpy(gap_buckets(since, self.cfg.time_buckets)),
            subject=ItemInputs(subject.item * keep, subject.author * keep, subject.feat * keep),
        )

    def request_time(self, user: np.ndarray, target_row: np.ndarray, protocol: str = "request_time") -> np.ndarray:
        """The request timestamps int64 [B] :meth:`request_features` uses: the target event's (``request_time``)
        or the last history event's (``strict``; 0 for a user without one)."""
        return self._times(user, target_row, self._strict_rows(len(user), protocol, None))[0]

    def _times(
        self, user: np.ndarray, target_row: np.ndarray, strict: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(request time, the last history event's time (0: none), has a history event), each [B]."""
        d = self.data
        has_prev = target_row > d.user_offsets[user]
        prev_ts = np.where(has_prev, d.event_ts[np.maximum(target_row - 1, 0)], 0)
        return np.where(strict, prev_ts, d.event_ts[target_row]), prev_ts, has_prev

    @staticmethod
    def _strict_rows(n: int, protocol: str, strict_rows: np.ndarray | None) -> np.ndarray:
        """bool [n]: which requests follow the strict protocol (``strict_rows`` overrides ``protocol``)."""
        check_protocol(protocol)
        return np.full(n, protocol == "strict") if strict_rows is None else strict_rows.astype(bool)

    def context(
        self,
        user: np.ndarray,
        snapshot_row: np.ndarray,
        target_row: np.ndarray,
        subject_row: np.ndarray | None = None,
        protocol: str = "request_time",
        strict_rows: np.ndarray | None = None,
    ) -> Context:
        """The online head's context for requests at ``target_row`` [B] on a state snapshotted at ``snapshot_row``:
        :meth:`request_features` plus the last ``context_len`` events in ``[snapshot_row, target_row)``."""
        ctx = self.request_features(user, target_row, subject_row, protocol, strict_rows)
        start = np.maximum(snapshot_row, target_row - self.cfg.context_len)
        ctx.events = self.users(user, start, target_row, pad_to=self.cfg.context_len)
        return ctx

    def request(
        self,
        user: np.ndarray,
        target_row: np.ndarray,
        snapshot_row: np.ndarray | None = None,
        protocol: str = "request_time",
    ) -> tuple[UserInputs, Context | None]:
        """Inputs of the user tower for requests at ``target_row`` [B]: (history, context).

        Unsplit models get ``(histories_before(target_row), None)`` (the same under both protocols). Hybrid
        models get the history before ``snapshot_row`` (default: the target itself, i.e. a fresh state) for the
        offline encoder, and the events since the snapshot as context for the online head, with the request
        features of ``protocol``.
        """
        check_protocol(protocol)
        if not self.cfg.online_head:
            return self.histories_before(user, target_row), None
        snap = target_row if snapshot_row is None else snapshot_row
        return self.histories_before(user, snap), self.context(user, snap, target_row, protocol=protocol)
