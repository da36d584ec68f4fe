"""Translation decoding: our exported beam-4 translator vs the keras.io KerasHub recipe's greedy decoder (goal >= 20).

The recipe is keras.io's "English-to-Spanish translation with KerasHub": a 1+1 layer
keras-hub `TransformerEncoder`/`TransformerDecoder` model (token and position embeddings,
embedding 256, intermediate 2048, 8 heads, vocabularies of 15,000, sequences of 40, a softmax
over 15,000 at every position) and its `decode_sequences`: one sentence at a time, eagerly,
`keras_hub.samplers.GreedySampler` over a `next` that runs the whole model (encoder included)
on the whole 40-token prompt at every step, with no cache. Its English WordPiece vocabulary is
learned, as the recipe learns it, on the English training lines; its ids are not detokenized
(the target vocabulary is a stand-in here; detokenizing costs little).

Ours is `task=translation model=transformer` with the same sizes (hidden 256, intermediate
2048, 8 heads, 1 encoder and 1 decoder block, source and target length 40, 39 output tokens,
`task.vocabulary_size=15000` SentencePiece per language), untrained by default
(`--train-steps N` trains it first; one step already taught it to stop after 2-3 tokens,
measured, which is not the recipe's work), exported with `task.export` (strings in, beam search and detokenization in the graph), loaded
back with `tf.saved_model.load` and called with `--batch` sentences a call, once exported
with `decode.beam_size=4` and once with 1. Sentences: the first 200 of Multi30k's English
validation text (`../shared/data/translation/multi30k_en_de`, trained on its first
`--train-lines` pairs), or generated ones where it is absent.

The three decode the same 200 sentences chunk by chunk in turn (recipe, beam 4, beam 1, then
the next chunk), so that a shared machine's load hits them alike; each first decodes one
chunk untimed (tracing, eager warm-up). Untrained models rarely emit [END] (the recipe stops
at it, ours once every beam has it), so both run to 39 tokens; the mean generated length of
each is printed to show it: equal lengths mean equal steps per sentence.

    python -m benchmarks decoding_vs_recipe [--sentences 200 --batch 50 --train-steps 0] [hydra overrides]

Prints sentences/s and mean generated tokens of each, and
`RATIO ours beam-4 / recipe sentences per second = X.XX`.
"""
import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, print_ratio  # noqa: E402

MULTI30K = REPO.parent / "shared" / "data" / "translation" / "multi30k_en_de"
# The recipe's constants (keras.io/examples/nlp/neural_machine_translation_with_keras_hub).
VOCAB_SIZE, SEQUENCE_LENGTH, EMBED_DIM, INTERMEDIATE_DIM, NUM_HEADS = 15000, 40, 256, 2048, 8
OURS = ["model.hidden_dim=256", "model.intermediate_dim=2048", "model.num_heads=8",
        "model.num_layers=1", "model.num_decoder_layers=1", "task.source_length=40",
        "task.target_length=40", "decode.max_length=39", "task.vocabulary_size=15000",
        "decode.beam_size=4"]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--batch", type=int, default=50, help="sentences per call of ours")
    parser.add_argument("--train-steps", type=int, default=0, help="ours, before export")
    parser.add_argument("--train-lines", type=int, default=10000,
                        help="Multi30k training pairs (ours trains, the recipe's WordPiece learns)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of ours")
    return parser.parse_args()


def recipe_model():
    """The recipe's `transformer`: [encoder ids (B, 40), decoder ids (B, 40)] -> probabilities."""
    import keras
    import keras_hub

    encoder_inputs = keras.Input(shape=(None,), name="encoder_inputs")
    x = keras_hub.layers.TokenAndPositionEmbedding(
        vocabulary_size=VOCAB_SIZE, sequence_length=SEQUENCE_LENGTH, embedding_dim=EMBED_DIM,
    )(encoder_inputs)
    encoder_outputs = keras_hub.layers.TransformerEncoder(
        intermediate_dim=INTERMEDIATE_DIM, num_heads=NUM_HEADS)(inputs=x)
    encoder = keras.Model(encoder_inputs, encoder_outputs)

    decoder_inputs = keras.Input(shape=(None,), name="decoder_inputs")
    encoded_seq_inputs = keras.Input(shape=(None, EMBED_DIM), name="decoder_state_inputs")
    x = keras_hub.layers.TokenAndPositionEmbedding(
        vocabulary_size=VOCAB_SIZE, sequence_length=SEQUENCE_LENGTH, embedding_dim=EMBED_DIM,
    )(decoder_inputs)
    x = keras_hub.layers.TransformerDecoder(
        intermediate_dim=INTERMEDIATE_DIM, num_heads=NUM_HEADS)(
        decoder_sequence=x, encoder_sequence=encoded_seq_inputs)
    x = keras.layers.Dropout(0.5)(x)
    decoder_outputs = keras.layers.Dense(VOCAB_SIZE, activation="softmax")(x)
    decoder = keras.Model([decoder_inputs, encoded_seq_inputs], decoder_outputs)
    decoder_outputs = decoder([decoder_inputs, encoder_outputs])
    return keras.Model([encoder_inputs, decoder_inputs], decoder_outputs, name="transformer")


def recipe_decoder(train_english):
    """The recipe's `decode_sequences(input_sentences)` -> generated ids (1, 40)."""
    import keras_hub
    import tensorflow as tf
    from keras import ops

    vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
        tf.data.Dataset.from_tensor_slices(train_english).batch(1024), vocabulary_size=VOCAB_SIZE,
        reserved_tokens=["[PAD]", "[UNK]", "[START]", "[END]"])
    eng_tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary=vocabulary,
                                                            lowercase=False)
    transformer = recipe_model()
    start_id, end_id, pad_id = 2, 3, 0  # the reserved tokens' ids, as in the recipe's vocabulary

    def decode_sequences(input_sentences):
        batch_size = 1
        # Tokenize the encoder input and pad it to 40 (cut there, as the recipe's data are).
        encoder_input_tokens = eng_tokenizer(input_sentences)
        if isinstance(encoder_input_tokens, tf.RaggedTensor):
            encoder_input_tokens = encoder_input_tokens.to_tensor()
        encoder_input_tokens = ops.convert_to_tensor(encoder_input_tokens)[:, :SEQUENCE_LENGTH]
        if len(encoder_input_tokens[0]) < SEQUENCE_LENGTH:
            pads = ops.full((1, SEQUENCE_LENGTH - len(encoder_input_tokens[0])), 0)
            encoder_input_tokens = ops.concatenate(
                [ops.cast(encoder_input_tokens, "int32"), pads], 1)

        def next(prompt, cache, index):
            logits = transformer([encoder_input_tokens, prompt])[:, index - 1, :]
            hidden_states = None  # ignored: the sampler does not use them
            return logits, hidden_states, cache

        length = SEQUENCE_LENGTH
        start = ops.full((batch_size, 1), start_id)
        pad = ops.full((batch_size, length - 1), pad_id)
        prompt = ops.concatenate((start, pad), axis=-1)
        return keras_hub.samplers.GreedySampler()(next, prompt, stop_token_ids=[end_id],
                                                   index=1)

    return decode_sequences, transformer, len(vocabulary)


def main():
    args = parse_args()
    import tempfile

    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the export's SentencePiece ops)

    from benchmarks.export_latency import build

    data = (["data=files", f"data.train={MULTI30K}/train", f"data.validation={MULTI30K}/val",
             f"data.limit={args.train_lines}"] if (MULTI30K / "val.en.gz").exists() else [])
    build_args = argparse.Namespace(overrides=[*data, *OURS, *args.overrides],
                                    train_steps=args.train_steps)
    cfg, task, model, splits = build(build_args)
    sentences = list(splits.validation[0][: args.sentences])
    source = "Multi30k validation" if data else "generated (Multi30k absent)"

    servers, lengths = {}, {}
    with tempfile.TemporaryDirectory() as directory:
        for beam in (4, 1):
            task.decode_cfg.beam_size = beam
            task.export(model, f"{directory}/beam{beam}")
            servers[f"ours beam {beam}"] = tf.saved_model.load(
                f"{directory}/beam{beam}").signatures["serving_default"]
            # The lengths of the same search in-process ([END] included where it ends).
            search = tf.function(lambda text: task.generate_ids(model, task.encode_source(text)))
            ids = np.concatenate([search(tf.constant(sentences[i:i + args.batch])).numpy()
                                  for i in range(0, len(sentences), args.batch)])
            lengths[f"ours beam {beam}"] = float(np.mean(np.sum(ids != 0, axis=1)))
        decode_sequences, transformer, recipe_vocabulary = recipe_decoder(list(splits.train[0]))

        recipe_lengths = []

        def recipe(chunk):
            for sentence in chunk:
                tokens = decode_sequences([sentence])  # (1, 40): [START], generated, [PAD]s
                recipe_lengths.append(int(np.sum(np.asarray(tokens)[0, 1:] != 0)))

        fns = {"recipe (greedy, batch 1, eager)": recipe}
        for name, serve in servers.items():
            fns[name] = lambda chunk, serve=serve: serve(text=tf.constant(chunk))[
                "translation"].numpy()
        chunks = [sentences[i:i + args.batch] for i in range(0, len(sentences), args.batch)]
        for fn in fns.values():  # trace, warm up
            fn(chunks[0][: min(len(chunks[0]), 4)] if fn is recipe else chunks[0])
        recipe_lengths.clear()
        seconds = {name: 0.0 for name in fns}
        for chunk in chunks:
            for name, fn in fns.items():
                began = time.perf_counter()
                fn(chunk)
                seconds[name] += time.perf_counter() - began
    lengths = {"recipe (greedy, batch 1, eager)": float(np.mean(recipe_lengths)), **lengths}

    print(f"{len(sentences)} sentences ({source}), ours: {model.count_params():,} parameters, "
          f"vocabularies {task.source_tokenizer.vocabulary_size()} / "
          f"{task.target_tokenizer.vocabulary_size()}, {args.train_steps} train steps, batch "
          f"{args.batch}, decode.jit_compile={cfg.decode.jit_compile}; recipe: "
          f"{transformer.count_params():,} parameters, English WordPiece "
          f"{recipe_vocabulary}; at most 39 generated tokens each")
    rates = {name: len(sentences) / seconds[name] for name in fns}
    for name in fns:
        print(f"{name:>32}: {rates[name]:8.2f} sentences/s, {lengths[name]:.1f} generated "
              f"tokens per sentence ({seconds[name]:.1f} s)")
    recipe_name = next(iter(fns))
    print_ratio("ours beam-4 / recipe sentences per second",
                rates["ours beam 4"] / rates[recipe_name])


if __name__ == "__main__":
    main()
