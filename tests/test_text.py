"""The Transformer and byte-level text: against a NumPy forward pass, hand-made byte streams and hand-computed metrics.

References here are written independently of the library: a float64 NumPy decoder (LayerNorm, multi-head
attention with an explicit causal mask, tanh-GELU MLP), windows and splits of byte streams worked out by hand,
and bits per byte = nats / ln 2 from a NumPy log-softmax.
"""

from __future__ import annotations

import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asgd_jax import TrainConfig, Trainer, Transformer, count_params, make_train
from asgd_jax.data import Dataset, byte_windows, text_dataset
from asgd_jax.models import make_model, parse_model, sinusoidal_positions
from experiments import sources

FORTUNES = "/usr/share/games/fortunes"
SMALL = "transformer:layers=1,width=16,heads=4,context=8"


# --- an independent NumPy decoder ----------------------------------------------------------------


def np_layer_norm(x, p, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_gelu(x):  # the tanh approximation (flax's nn.gelu default)
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def np_attention(x, p, heads):
    """Multi-head causal self-attention of x (T, D), written out head by head with an explicit mask."""
    t, d = x.shape
    dh = d // heads
    out = np.zeros((t, d))
    for h in range(heads):
        q = x @ p["query"]["kernel"][:, h, :] + p["query"]["bias"][h]
        k = x @ p["key"]["kernel"][:, h, :] + p["key"]["bias"][h]
        v = x @ p["value"]["kernel"][:, h, :] + p["value"]["bias"][h]
        scores = q @ k.T / np.sqrt(dh)
        for i in range(t):  # position i sees positions 0..i only
            for j in range(i + 1, t):
                scores[i, j] = -np.inf
        w = np.exp(scores - scores.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        out += (w @ v) @ p["out"]["kernel"][h]
    return out + p["out"]["bias"]


def np_block(x, p, heads):
    x = x + np_attention(np_layer_norm(x, p["ln1"]), p["attn"], heads)
    y = np_layer_norm(x, p["ln2"])
    y = np_gelu(y @ p["mlp_in"]["kernel"] + p["mlp_in"]["bias"]) @ p["mlp_out"]["kernel"] + p["mlp_out"]["bias"]
    return x + y


def np_transformer(params, tokens, layers, heads, positions="learned"):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    t = tokens.shape[-1]
    x = p["embed"]["embedding"][tokens]
    if positions == "learned":
        x = x + p["pos_embedding"][:t]
    else:
        d = x.shape[-1]
        pe = np.array([[math.sin(s / 10000 ** (i / d)) if i % 2 == 0 else math.cos(s / 10000 ** ((i - 1) / d))
                        for i in range(d)] for s in range(t)])
        x = x + pe
    for i in range(layers):
        x = np_block(x, p[f"block{i}"], heads)
    x = np_layer_norm(x, p["ln_final"])
    return x @ p["head"]["kernel"] + p["head"]["bias"]


@pytest.mark.parametrize("layers, heads, positions", [(1, 4, "learned"), (2, 2, "sinusoidal")])
def test_transformer_matches_numpy_decoder(layers, heads, positions):
    model = make_model(f"transformer:layers={layers},width=16,heads={heads},context=8,positions={positions}", 256)
    tokens = np.random.default_rng(0).integers(0, 256, (3, 7))
    params = model.init(jax.random.key(1), jnp.zeros((1, 8), jnp.int32))["params"]
    # flax initializes LayerNorm to scale 1, bias 0 and the biases to 0: perturb them so every term is checked
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = jax.tree.unflatten(tree, [a + 0.1 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
    got = model.apply({"params": params}, jnp.asarray(tokens, jnp.int32))
    want = np.stack([np_transformer(params, tok, layers, heads, positions) for tok in tokens])
    chex.assert_trees_all_close(np.asarray(got, np.float64), want, rtol=2e-4, atol=2e-4)


def test_causal_mask_hides_the_future_and_nothing_else():
    model = make_model(SMALL, 256)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    a = np.random.default_rng(1).integers(0, 256, (8,))
    for t in range(8):
        b = a.copy()
        b[t] = (b[t] + 1) % 256
        la, lb = (np.asarray(model.apply({"params": params}, jnp.asarray(v)[None]))[0] for v in (a, b))
        np.testing.assert_array_equal(la[:t], lb[:t])  # earlier positions do not see token t
        assert np.abs(la[t] - lb[t]).max() > 1e-6  # position t does


def test_one_sequence_does_not_depend_on_its_batch_and_vmap_over_params_is_alone():
    model = make_model(SMALL, 256)
    ps = [model.init(jax.random.key(k), jnp.zeros((1, 8), jnp.int32))["params"] for k in range(2)]
    x = jnp.asarray(np.random.default_rng(2).integers(0, 256, (4, 8)), jnp.int32)
    alone = model.apply({"params": ps[0]}, x[:1])
    in_batch = model.apply({"params": ps[0]}, x)[:1]
    chex.assert_trees_all_close(alone, in_batch, rtol=1e-5, atol=1e-6)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *ps)
    both = jax.vmap(lambda p: model.apply({"params": p}, x))(stacked)
    for i in range(2):
        chex.assert_trees_all_close(both[i], model.apply({"params": ps[i]}, x), rtol=1e-5, atol=1e-6)


def test_parameter_count_by_hand():
    # width 16, 4 heads, context 8, 1 layer: embed 256*16, positions 8*16, q/k/v/out 4*(16*16+16),
    # 2 block LayerNorms + final 3*32, MLP 16*64+64 + 64*16+16, head 16*256+256
    params = make_model(SMALL, 256).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    assert count_params(params) == 4096 + 128 + 4 * 272 + 96 + 1088 + 1040 + 4352


@pytest.mark.parametrize("spec, words", [
    ("transformer:depth=2", ["unknown transformer option 'depth'", "layers, width"]),
    ("transformer:width=100,heads=3", ["heads=3 does not divide width=100"]),
    ("transformer:layers=two", ["layers='two'", "not an integer"]),
    ("transformer:layers=", ["needs a value"]),
    ("transformer:positions=rotary", ["positions must be"]),
    ("transformers", ["unknown model 'transformers'"]),
    ("lenet5:width=3", ["takes no options"]),
])
def test_bad_model_specs_are_one_line(spec, words):
    with pytest.raises(ValueError) as e:
        parse_model(spec)
    assert len(str(e.value).splitlines()) == 1
    for w in words:
        assert w in str(e.value)
    with pytest.raises(ValueError):  # the Trainer's config refuses it before anything compiles
        TrainConfig(model=spec).validate()


def test_sinusoidal_positions_by_hand():
    pe = sinusoidal_positions(5, 6)
    for t in range(5):
        for i in range(3):
            assert pe[t, 2 * i] == pytest.approx(math.sin(t / 10000 ** (2 * i / 6)), abs=1e-6)
            assert pe[t, 2 * i + 1] == pytest.approx(math.cos(t / 10000 ** (2 * i / 6)), abs=1e-6)


# --- byte windows and the split ----------------------------------------------------------------------------


def test_windows_and_split_of_a_hand_made_stream():
    stream = b"0123456789ABCDEFGHIJ"  # 20 bytes; test_fraction 0.25 -> the last 5 bytes "FGHIJ"
    ds = text_dataset(stream, context=3, test_fraction=0.25)
    assert ds.is_text and ds.num_classes == 256 and ds.x_train.dtype == np.int32
    # train "0123456789ABCDE" (15 bytes), stride 3: starts 0, 3, 6, 9 (start + 4 <= 15), 11 would overflow
    as_text = lambda a: [bytes(r.astype(np.uint8)).decode() for r in a]
    assert as_text(ds.x_train) == ["012", "345", "678", "9AB"]
    assert as_text(ds.y_train) == ["123", "456", "789", "ABC"]
    assert as_text(ds.x_test) == ["FGH"] and as_text(ds.y_test) == ["GHI"]
    x, y = byte_windows(b"abcdef", 2, stride=1)  # overlapping windows: starts 0..3
    assert as_text(x) == ["ab", "bc", "cd", "de"] and as_text(y) == ["bc", "cd", "de", "ef"]
    assert byte_windows(b"ab", 2)[0].shape == (0, 2)  # too short for one window


def test_separate_test_text_and_evenly_spaced_test_windows():
    ds = text_dataset(b"abcdefgh", 2, None, test=bytes(range(65, 65 + 21)), max_test_windows=3)
    # test "ABC...U" (21 bytes): windows start at 0, 2, ..., 18 (10 windows); keep indices 0, 4.5 -> 4 (round half
    # to even), 9
    assert [bytes(r.astype(np.uint8)) for r in ds.x_test] == [b"AB", b"IJ", b"ST"]
    assert ds.num_train == 3


@pytest.mark.parametrize("kwargs, word", [
    (dict(data=b"", context=4), "is empty"),
    (dict(data=b"abcdefghij", context=2), "context 2 is longer than its test text allows (1 bytes"),
    (dict(data=b"abcdefghij" * 10, context=95), "context 95 is longer than its training text"),
    (dict(data=b"abcdefghij", context=2, test_fraction=1.5), "test_fraction must lie in (0, 1)"),
    (dict(data="a str", context=2), "pass bytes"),
])
def test_text_dataset_errors_are_one_line(kwargs, word):
    with pytest.raises(ValueError) as e:
        text_dataset(**kwargs)
    assert len(str(e.value).splitlines()) == 1 and word in str(e.value)


def test_dataset_refuses_mismatched_text_arrays():
    x = np.zeros((2, 4), np.int32)
    with pytest.raises(ValueError, match="text y_train must be int32 of x_train's shape"):
        Dataset(x, np.zeros((2, 3), np.int32), x, x, num_classes=256, name="t")
    with pytest.raises(ValueError, match="x_test has tokens in"):
        Dataset(x, x, x + 300, x, num_classes=256, name="t")


# --- the Trainer on text ----------------------------------------------------------------------------------


def _text(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    words = [b"alpha ", b"beta ", b"gamma ", b"delta\n"]
    return b"".join(words[i] for i in rng.integers(0, 4, n // 5))


def test_trainer_evaluates_per_token_and_bits_per_byte_by_hand():
    ds = text_dataset(_text(), context=8, test_fraction=0.2)
    trainer = Trainer(TrainConfig(model=SMALL, optimizer="adam", batch_size=4, epochs=1, eval_batch_size=7), ds)
    params = trainer.model.init(jax.random.key(3), jnp.zeros((1, 8), jnp.int32))["params"]
    ev = trainer.evaluate(trainer.data, params)
    logits = np.stack([np_transformer(params, x, 1, 4) for x in ds.x_test])  # (N, T, 256), float64
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    nats = -np.take_along_axis(logp, ds.y_test[..., None], -1)[..., 0]  # (N, T)
    acc = (logits.argmax(-1) == ds.y_test).mean()
    assert float(ev["test_loss"]) == pytest.approx(nats.mean(), rel=1e-4)
    assert float(ev["bits_per_byte"]) == pytest.approx(nats.mean() / math.log(2), rel=1e-4)
    assert float(ev["perplexity"]) == pytest.approx(math.exp(nats.mean()), rel=1e-4)
    assert float(ev["test_accuracy"]) == pytest.approx(acc, abs=1e-6)


def test_model_and_data_must_fit_before_compiling():
    text = text_dataset(_text(), context=8)
    with pytest.raises(ValueError, match="longer than the model's context=4"):
        Trainer(TrainConfig(model="transformer:layers=1,width=8,heads=2,context=4", batch_size=2, epochs=1), text)
    with pytest.raises(ValueError, match="use a transformer"):
        Trainer(TrainConfig(model="mlp", batch_size=2, epochs=1), text)
    images = Dataset(np.zeros((4, 8, 8, 1), np.float32), np.zeros(4, np.int32), np.zeros((1, 8, 8, 1), np.float32),
                     np.zeros(1, np.int32), num_classes=2, name="img")
    with pytest.raises(ValueError, match="use an image model"):
        Trainer(TrainConfig(model=SMALL, batch_size=2, epochs=1), images)
    with pytest.raises(ValueError, match="steps_per_epoch=99"):
        Trainer(TrainConfig(model=SMALL, batch_size=4, epochs=1, steps_per_epoch=99), text)


def test_text_training_learns_vmapped_equals_alone_and_seeds_repeat():
    ds = text_dataset(_text(3000), context=8, test_fraction=0.2)
    cfg = TrainConfig(model=SMALL, optimizer="adam", batch_size=8, epochs=2, steps_per_epoch=15, system="async",
                      max_workers=2)
    train = make_train(cfg, ds)
    keys = jax.random.split(jax.random.key(0), 2)
    hp = {"learning_rate": jnp.array([3e-3, 1e-2]), "workers": jnp.array([2, 2]), "warmup_steps": jnp.array([5, 5])}
    both = jax.jit(jax.vmap(train))(keys, hp)
    alone = jax.jit(train)(keys[1], {k: v[1] for k, v in hp.items()})
    again = jax.jit(train)(keys[1], {k: v[1] for k, v in hp.items()})
    for k in ("test_loss", "bits_per_byte", "test_accuracy", "perplexity", "sim_time"):
        chex.assert_trees_all_close(both[k][1], alone[k], rtol=2e-5, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(alone[k]), np.asarray(again[k]))
    # four words over 2 400 bytes: after 30 gradients the test loss is well under uniform (8 bits per byte)
    assert float(both["bits_per_byte"][1, -1]) < 4.0
    chex.assert_trees_all_close(both["bits_per_byte"], both["test_loss"] / np.log(2), rtol=1e-6)


# --- text sources ------------------------------------------------------------------------------------------


def test_text_source_reads_a_file_and_a_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.txt").write_bytes("wörld\n".encode())
    (tmp_path / "d" / "a.txt").write_bytes(b"hello ")
    (tmp_path / "d" / "a.dat").write_bytes(b"\x00\xff\xfe")  # a fortune index: left out
    (tmp_path / "d" / "b.u8").symlink_to(tmp_path / "d" / "b.txt")  # a link: left out
    (tmp_path / "d" / "sub").mkdir()
    (tmp_path / "d" / "sub" / "c").write_bytes(b"!")
    assert sources.read_text_bytes(str(tmp_path / "d")) == "hello wörld\n!".encode()
    assert sources.parse_source(f"text:{tmp_path / 'd'}") == ("text", str(tmp_path / "d"))
    f = tmp_path / "one.txt"
    f.write_bytes(bytes(range(32, 127)) * 3)  # 285 bytes: test = the last 28
    ds = sources.load_text_source(f"text:{f}", context=16)
    assert ds.name == f"text:{f}" and ds.num_test == 1 and ds.num_train == (257 - 17) // 16 + 1
    assert ds.x_test[0].tolist() == list((bytes(range(32, 127)) * 3)[257:273])
    with pytest.raises(sources.DataSourceError, match="context 128 is longer than its test text"):
        sources.load_source(f"text:{f}")  # load_source's default context: 128 bytes


@pytest.mark.parametrize("body, word", [
    (b"", "the text is empty"),
    (b"ok \xff\xfe bad", "is not UTF-8 text (byte 0xff at offset 3)"),
    (b"short", "context 16 is longer than its"),
])
def test_bad_text_files_are_one_line(tmp_path, body, word):
    f = tmp_path / "t.txt"
    f.write_bytes(body)
    with pytest.raises(sources.DataSourceError) as e:
        sources.load_text_source(f"text:{f}", context=16)
    assert len(str(e.value).splitlines()) == 1 and word in str(e.value)


def test_missing_text_path_names_the_fix():
    with pytest.raises(sources.DataSourceError, match="apt-get install fortunes"):
        sources.parse_source("text:/no/such/fortunes")


def test_tfds_tiny_shakespeare_through_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=30):
        ds = sources.load_text_source("tfds:tiny_shakespeare", context=8, data_dir=str(tmp_path))
        via_load_source = sources.load_source("tfds:tiny_shakespeare", data_dir=str(tmp_path))
    assert ds.is_text and ds.name == "tfds:tiny_shakespeare" and ds.num_train > 0 and ds.num_test > 0
    np.testing.assert_array_equal(ds.y_train[:, :-1], ds.x_train[:, 1:])  # y is x shifted by one byte
    assert via_load_source.is_text


@pytest.mark.skipif(not os.path.isdir(FORTUNES), reason="the Debian package fortunes is not installed")
def test_fortunes_corpus_reads_as_utf8_text():
    data = sources.read_text_bytes(FORTUNES)
    assert len(data) > 1_000_000
    ds = sources.load_text_source(f"text:{FORTUNES}", context=128)
    n_test = len(data) // 10
    assert ds.num_test == (n_test - 129) // 128 + 1
    assert bytes(ds.x_test[0].astype(np.uint8)) == data[len(data) - n_test:][:128]


def test_per_worker_text_shards_train_and_count_each_workers_gradients():
    ds = text_dataset(_text(3000), context=8, test_fraction=0.2)
    cfg = TrainConfig(model=SMALL, optimizer="adam", batch_size=4, epochs=1, steps_per_epoch=12, system="async",
                      max_workers=3, data_split="contiguous")
    m = jax.jit(make_train(cfg, ds))(jax.random.key(0), {"learning_rate": 3e-3, "workers": 3})
    # asynchronous, nothing dropped: every arrival is used, so the per-worker counts add up to the server steps
    # (12 gradients, the first 2 only fill the pool of 3 workers)
    assert int(m["worker_gradients"][-1].sum()) == int(m["server_steps"][-1]) == 10
    assert np.isfinite(float(m["bits_per_byte"][-1])) and m["per_class_accuracy"].shape == (1, 256)
    with pytest.raises(ValueError, match="text has none"):
        Trainer(TrainConfig(model=SMALL, batch_size=4, epochs=1, system="async", max_workers=2, data_split="label"),
                ds)
