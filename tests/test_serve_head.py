"""The served online head: the traced graph equals eager ``encode_online``, and serving never depends on it."""

from __future__ import annotations

import copy
import gc
import os
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from test_serve_support import TOKEN, settings, shared_artifacts

from twotower.serve.app import create_app
from twotower.serve.bundle import load_bundle
from twotower.serve.head import OnlineEncoder, random_context


@pytest.fixture(scope="session")
def art(tmp_path_factory, synth_data):
    return shared_artifacts(tmp_path_factory, synth_data)


@pytest.fixture(scope="module")
def bundle(art):
    return load_bundle(art.root)


def test_traced_head_equals_eager_at_every_batch_size(bundle):
    enc = bundle.encoder
    assert enc.traced, enc.reason
    gen = torch.Generator().manual_seed(123)
    F = bundle.items.feat.shape[1]
    for B in (1, 4, 33):  # the trace was taken at batch 3: other sizes must not be baked in
        state, ctx = random_context(bundle.model, B, F, gen)
        ctx.subject.item[: B // 2] = 0  # a mix of requests with and without a subject item
        ctx.subject.author[: B // 2] = 0
        ctx.subject.feat[: B // 2] = 0
        with torch.inference_mode():
            want = bundle.model.encode_online(state, ctx)
        got = enc(state, ctx)
        assert got.shape == (B, bundle.model_config.dim)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # all-zero states (cold start) and no events at all
    state, ctx = random_context(bundle.model, 5, F, gen)
    state.zero_()
    ctx.events.length.zero_()
    for t in (ctx.events.history.item, ctx.events.history.author, ctx.events.history.feat):
        t.zero_()
    with torch.inference_mode():
        torch.testing.assert_close(enc(state, ctx), bundle.model.encode_online(state, ctx), atol=1e-5, rtol=0)


def test_a_failing_trace_falls_back_to_eager(bundle, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("tracer exploded")

    monkeypatch.setattr(torch.jit, "trace", broken)
    enc = OnlineEncoder(bundle.model, bundle.items.feat.shape[1])
    assert not enc.traced and "tracer exploded" in enc.reason
    assert "eager online head" in caplog.text
    state, ctx = random_context(bundle.model, 2, bundle.items.feat.shape[1], torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(enc(state, ctx), bundle.model.encode_online(state, ctx), atol=0, rtol=0)


def test_a_trace_that_disagrees_with_eager_is_not_used(bundle, monkeypatch):
    real = torch.jit.trace

    def off_by_a_bit(module, example, **kwargs):
        graph = real(module, example, **kwargs)
        return lambda *a: graph(*a) + 1e-3

    monkeypatch.setattr(torch.jit, "trace", off_by_a_bit)
    enc = OnlineEncoder(bundle.model, bundle.items.feat.shape[1])
    assert not enc.traced and "differs from eager" in enc.reason


def test_tracing_can_be_turned_off(bundle):
    enc = OnlineEncoder(bundle.model, bundle.items.feat.shape[1], trace=False)
    assert not enc.traced and "TWOTOWER_TRACE_HEAD=0" in enc.reason


def test_the_service_freezes_its_loaded_heap(art):
    """The loaded bundle is moved out of the cyclic GC's reach (full collections over it stalled requests)."""
    gc.unfreeze()
    with TestClient(create_app(settings(art.root))):
        assert gc.get_freeze_count() > 0
    gc.unfreeze()


@pytest.mark.parametrize("replaced", [False, True], ids=["alone", "replaced"])
def test_a_swapped_out_bundle_is_freed_without_the_cyclic_gc(art, replaced):
    """The service freezes its heap and never unfreezes it on reload, so an old bundle must be freed by
    reference counting alone: no reference cycle through the model, encoder, index or item table. The bundle
    that replaced it (built from its head graph) holds no reference to it, and is freed the same way."""
    import weakref

    old = load_bundle(art.root)
    new = load_bundle(art.root, previous=old) if replaced else None
    refs = [weakref.ref(o) for o in (old, old.model, old.encoder, old.index, old.items)]
    new_refs = [] if new is None else [weakref.ref(o) for o in (new, new.encoder, new.encoder.graph)]
    # As the service does before freezing: collect what loading left (torch.jit.trace leaves a reference
    # cycle of closures around the traced module; it is garbage by then, so it goes here, never frozen).
    gc.collect()
    gc.disable()  # from here on, prove it without the cyclic collector
    try:
        del old
        assert [r() is None for r in refs] == [True] * len(refs)
        assert new is None or new.encoder.traced
        del new
        assert [r() is None for r in new_refs] == [True] * len(new_refs)
    finally:
        gc.enable()


def test_a_new_encoder_reuses_the_graph_it_replaces(bundle, monkeypatch):
    """A reload binds the previous graph to the new model's tensors instead of tracing again (each trace keeps
    ~3 MiB in TorchScript's process-wide compilation unit); the result is checked against the new model."""
    F = bundle.items.feat.shape[1]
    new_model = copy.deepcopy(bundle.model)
    with torch.no_grad():
        for p in new_model.parameters():
            p.add_(0.01 * torch.randn_like(p))

    def no_trace(*args, **kwargs):
        raise AssertionError("traced again")

    monkeypatch.setattr(torch.jit, "trace", no_trace)
    enc = OnlineEncoder(new_model, F, like=bundle.encoder)
    assert enc.traced, enc.reason
    assert enc.graph is not bundle.encoder.graph
    shared = {p.data_ptr() for p in new_model.parameters()}
    assert all(p.data_ptr() in shared for p in enc.graph.parameters())  # bound, not copied
    state, ctx = random_context(new_model, 4, F, torch.Generator().manual_seed(7))
    with torch.inference_mode():
        got, want = enc(state, ctx), new_model.encode_online(state, ctx)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        assert (got - bundle.encoder(state, ctx)).abs().max() > 1e-4  # the new weights, not the old ones


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc")
def test_reloads_do_not_grow_memory(art):
    """Issue 17.2: RSS grew ~3-4 MiB per reload with the traced head (every reload traced it again, and
    TorchScript never frees a trace's types and execution plans)."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(settings(art.root, reload_poll_s=0))) as c:
        body = {"user_id": "u1", "k": 5}

        def reload() -> None:
            assert c.post("/admin/reload", headers=auth).status_code == 200
            assert c.post("/v1/retrieve", json=body).status_code == 200  # run the new graph (execution plans)

        for _ in range(3):  # warm-up: allocator pools, first execution plans
            reload()
        before = rss_mib()
        for _ in range(RELOADS):
            reload()
        growth = rss_mib() - before
    assert growth < RELOADS * 0.5, f"RSS grew {growth:.1f} MiB over {RELOADS} reloads"


RELOADS = 12
