"""The model's dataclass config, saved beside every checkpoint and artifact."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import check, check_float, check_int

POSITIONS = ("none", "learned", "time", "learned+time")
POOLINGS = ("mean", "last")
SIMILARITIES = ("cosine", "dot")
ITEM_TOWERS = ("mlp", "linear")


@dataclass
class ModelConfig:
    """Phoenix-style two-tower model. ``D`` = ``dim``, ``H`` = ``num_hashes``, ``S`` = ``max_len``."""

    dim: int = 64
    num_hashes: int = 2
    item_buckets: int = 1 << 16  # per entity type; bucket 0 is padding
    author_buckets: int = 1 << 14
    user_buckets: int = 1 << 14
    feature_buckets: int = 1 << 14
    num_actions: int = 0  # from the dataset manifest
    num_surfaces: int = 0
    max_len: int = 200  # history length S (the user token comes on top)
    num_layers: int = 2
    num_heads: int = 2
    ffn_mult: int = 4
    dropout: float = 0.2  # embeddings and residual branches
    attn_dropout: float = 0.0  # on attention weights (forces the slower math kernel on CPU)
    causal: bool = True  # causal: every position is a training example; bidirectional: the last only
    positions: str = "learned"  # none | learned | time | learned+time (time = log2 gap buckets)
    pooling: str = "last"  # last | mean (masked mean over the visible prefix, as in the Phoenix seed)
    user_token: bool = True  # prepend the hashed user id (+ user features) token
    # Score: cosine (unit user and item vectors, / temperature) or dot (raw vectors, as SASRec / MF: an item's
    # norm can carry its popularity, which a cosine cannot express). The index scores by inner product either way.
    similarity: str = "cosine"
    # A history token also gets its item's candidate vector (the item tower's output), as SASRec ties its input
    # and output item embeddings: "like this item" becomes a direct path from history to score.
    tied_input: bool = False
    item_tower: str = "mlp"  # mlp: Linear(2D) -> SiLU -> Linear(D) (seed 003); linear: one Linear(D)
    time_buckets: int = 32
    # Content (twotower.data.text / semantic_ids): the candidate tower reads the item's text vector through a
    # learned projection when the dataset has one (text_dim, set from the dataset: 0 = none), and semantic-ID
    # prefix tokens join the item features when the dataset has them (codebook: the version, from the dataset)
    text: bool = True
    text_dim: int = 0
    semantic_ids: bool = True
    codebook: str = ""
    # Item-id dropout (DropoutNet, Volkovs et al. 2017): in training, the candidate tower reads this share of
    # items without their id embedding, so it learns to place an item from its content alone; items that no
    # model trained on (cold-start protocol, `index upsert` of a new item) are then encoded without the id.
    id_dropout: float = 0.0
    # Hybrid split (seed 001): offline encoder -> cached state; online head over (state, real-time context).
    online_head: bool = False  # False = the unsplit tower (encode_user runs the encoder at request time)
    state_tokens: int = 1  # cached state = the encoder's last T outputs ([T, D]); 1 = the pooled vector
    context_len: int = 16  # C: at most this many events since the snapshot reach the online head
    head_heads: int = 2  # attention heads of the head's context layer

    @property
    def cached_state_shape(self) -> tuple[int, int]:
        """(T, D) of one user's row in the feature store: the encoder's last ``state_tokens`` outputs for a
        hybrid tower, the user vector itself (T = 1) for an unsplit one."""
        return (self.state_tokens if self.online_head else 1), self.dim

    def __post_init__(self) -> None:
        """Range checks; every failure is a ConfigError naming the field, the value and what is allowed."""
        for name in ("dim", "num_hashes", "max_len", "num_heads", "ffn_mult", "time_buckets"):
            check_int(self, name, 1)
        for name in ("state_tokens", "context_len", "head_heads"):
            check_int(self, name, 1)
        for name in ("num_actions", "num_surfaces", "num_layers", "text_dim"):
            check_int(self, name, 0)
        for name in ("item_buckets", "author_buckets", "user_buckets", "feature_buckets"):
            check(getattr(self, name) >= 2, name, getattr(self, name), "it must be an integer >= 2 (0 is padding)")
        for name in ("dropout", "attn_dropout", "id_dropout"):
            check_float(self, name, 0.0, 1.0, hi_open=True)
        check(self.positions in POSITIONS, "positions", self.positions, f"use one of {POSITIONS}")
        check(self.item_tower in ITEM_TOWERS, "item_tower", self.item_tower, f"use one of {ITEM_TOWERS}")
        check(self.similarity in SIMILARITIES, "similarity", self.similarity, f"use one of {SIMILARITIES}")
        check(self.pooling in POOLINGS, "pooling", self.pooling, f"use one of {POOLINGS}")
        check(self.dim % self.num_heads == 0, "dim", self.dim, f"it must be divisible by num_heads ({self.num_heads})")
        check(
            self.dim % self.head_heads == 0, "dim", self.dim, f"it must be divisible by head_heads ({self.head_heads})"
        )
        check(
            self.causal or not self.online_head,
            "causal",
            self.causal,
            "online_head needs causal = true: the cached state is the encoder output at a prefix",
        )
