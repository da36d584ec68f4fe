"""`decode.jit_compile`: the XLA-compiled search gives the graph search's tokens and scores,
the key decides (and logs) whether translation decodes under XLA, `auto` reads the decoder
family's measurement and the number of sentences, equal-size batches hide their padding, the
export compiles its search only with `true` and then still serves in a fresh process, and a
bad value is refused before TensorFlow runs."""
import logging

import numpy as np
import pytest
import tensorflow as tf
from hydra import compose, initialize_config_dir

from pipelines.decoding import beam_search, greedy_search
from pipelines.tasks.generation import GenerationTask
from tests.conftest import REPO
from tests.pipelines.test_translation import _serve_in_fresh_process, _toy_task

SOURCES = ["a big dog", "the red cat sees a dog", "my cat eats fish", "the small bird"]


# The Transformer's compile takes ~25 s on the 2-core CPU (the export test below compiles one).
@pytest.mark.parametrize("model", ["lstm", pytest.param("transformer", marks=pytest.mark.slow)])
def test_xla_search_gives_the_graph_tokens_and_scores(model):
    task, _ = _toy_task(model)
    network = task.build_model()  # untrained: every row runs to max_length, random tokens
    source = task.encode_source(tf.constant(SOURCES))
    start = tf.fill([len(SOURCES)], task.start_id)

    def searches(source):
        state = network.encode(source)
        greedy = greedy_search(network.step, state, start, task.max_decode, task.end_id)
        beam, scores = beam_search(network.step, state, start, task.max_decode, task.end_id,
                                   beam_size=3, length_penalty=0.6)
        return greedy, beam, scores

    graph = [t.numpy() for t in tf.function(searches, jit_compile=False)(source)]
    xla = [t.numpy() for t in tf.function(searches, jit_compile=True)(source)]
    np.testing.assert_array_equal(xla[0], graph[0])  # greedy tokens
    np.testing.assert_array_equal(xla[1], graph[1])  # beam tokens
    np.testing.assert_allclose(xla[2], graph[2], rtol=1e-6, atol=1e-6)  # beam scores
    assert (graph[1] != 0).any()
    # The task's own search (the path translate and the export take) agrees too.
    np.testing.assert_array_equal(task.search(network, jit_compile=True)(source),
                                  tf.function(task.search(network, jit_compile=False))(source))


@pytest.mark.parametrize("setting", ["true", "false"])
def test_the_key_decides_and_logs_xla_and_hides_the_padding(setting, caplog, monkeypatch):
    task, _ = _toy_task("transformer", f"decode.jit_compile={setting}", "decode.beam_size=2")
    network = task.build_model()
    searched = []  # the jit_compile of every search the translations traced
    search = task.search
    monkeypatch.setattr(task, "search", lambda model, jit_compile=False: (
        searched.append(jit_compile), search(model, jit_compile))[1])
    with caplog.at_level(logging.INFO, logger="pipelines.tasks.generation"):
        five = task.translate(network, SOURCES + ["a big dog runs"], batch_size=2)
        one = task.translate(network, ["a big dog runs"])
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("decode: XLA")]
    on = setting == "true"
    assert logged == [f"decode: XLA {'on' if on else 'off'} (decode.jit_compile={setting})"]
    assert searched and set(searched) == {on}
    # With XLA the last batch of five at batch size 2 was padded; the padding never shows.
    assert len(five) == 5 and one[0] == five[4]


def test_with_xla_every_batch_has_one_size():
    seen = []

    def fn(batch):
        seen.append(list(batch) if isinstance(batch, list) else batch.tolist())
        return [f"out {x}" for x in batch]

    decode_in_batches = GenerationTask.decode_in_batches
    for equal, sizes in ((True, [2, 2, 2]), (False, [2, 2, 1])):
        seen[:] = []
        assert decode_in_batches(fn, ["a", "b", "c", "d", "e"], 2, equal) == [
            f"out {x}" for x in "abcde"]
        assert [len(b) for b in seen] == sizes
    images = np.arange(3 * 2).reshape(3, 2)
    assert decode_in_batches(fn, images, 2, True) == ["out [0 1]", "out [2 3]", "out [4 5]"]
    assert seen[-1] == [[4, 5], [4, 5]]  # the last item repeated
    assert decode_in_batches(fn, [], 2, True) == []


@pytest.mark.parametrize("setting", ["true", "auto"])
def test_export_compiles_the_search_only_with_true_and_serves_in_a_fresh_process(setting,
                                                                                 tmp_path):
    task, _ = _toy_task("transformer", f"decode.jit_compile={setting}", "decode.beam_size=2")
    network = task.build_model()
    task.export(network, str(tmp_path))
    graph = (tmp_path / "saved_model.pb").read_bytes()
    assert (b"_XlaMustCompile" in graph) is (setting == "true")
    if setting == "true":  # (auto exports the graph search that test_translation serves)
        expected = [t.decode() for t in task.serve_in_process(network, SOURCES)["translation"]]
        assert _serve_in_fresh_process(tmp_path, SOURCES) == expected


class _Family:
    def __init__(self, name, xla_decode_on_cpu):
        self.name, self.xla_decode_on_cpu = name, xla_decode_on_cpu


@pytest.mark.parametrize("setting,family,expected,reason", [
    (True, _Family("lstm", False), True, "decode.jit_compile=true"),
    (False, _Family("transformer", True), False, "decode.jit_compile=false"),
    ("auto", _Family("transformer", True), True, "transformer decodes faster under XLA"),
    ("auto", _Family("lstm", False), False, "lstm decodes slower under XLA"),
])
@pytest.mark.parametrize("sentences", [10_000, None, 200])
def test_auto_follows_the_decoder_familys_measurement(setting, family, expected, reason,
                                                      sentences):
    from pipelines.distribute import choose_decode_jit

    jit, why = choose_decode_jit(setting, family, sentences)
    if setting == "auto" and sentences is None:  # the export: compiled only with true
        expected, reason = False, "the export serves requests of any batch size"
    elif setting == "auto" and sentences == 200:
        expected, reason = False, "200 sentences do not pay for an XLA compile"
    assert jit is expected and reason in why


def test_decode_jit_compile_takes_only_auto_true_false():
    from pipelines.config import ConfigError, check, register_schemas

    register_schemas()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["task=translation", "decode.jit_compile=sometimes"])
    with pytest.raises(ConfigError, match="decode.jit_compile must be auto, true or false"):
        check(cfg)
