"""Reference cosine similarities for all-MiniLM-L6-v2, computed apart from
candle: the BERT forward pass written out in numpy over the same
safetensors weights, the tokenizer from Hugging Face's Python `tokenizers`,
mean pooling and L2 normalisation as sentence-transformers configures them.

    pip install numpy safetensors tokenizers
    python3 minilm_ref.py ../../weights/all-MiniLM-L6-v2 < pairs.tsv

Its first pair gives 0.7553, the value sentence-transformers' documentation
prints for the same two sentences with this model."""
import sys, json, math
import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

d = sys.argv[1]
W = load_file(f"{d}/model.safetensors")
cfg = json.load(open(f"{d}/config.json"))
tok = Tokenizer.from_file(f"{d}/tokenizer.json")
tok.no_padding()
tok.enable_truncation(256)
p = "" if "embeddings.word_embeddings.weight" in W else "bert."
H, NH = cfg["hidden_size"], cfg["num_attention_heads"]
erf = np.vectorize(math.erf)

def ln(x, name):
    m = x.mean(-1, keepdims=True); v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + cfg["layer_norm_eps"]) * W[name + ".weight"] + W[name + ".bias"]

def lin(x, name):
    return x @ W[name + ".weight"].T + W[name + ".bias"]

def embed(text):
    enc = tok.encode(text)
    ids = np.array(enc.ids)
    n = len(ids)
    x = W[p+"embeddings.word_embeddings.weight"][ids] + W[p+"embeddings.position_embeddings.weight"][:n] + W[p+"embeddings.token_type_embeddings.weight"][0]
    x = ln(x, p+"embeddings.LayerNorm").astype(np.float64)
    for l in range(cfg["num_hidden_layers"]):
        b = f"{p}encoder.layer.{l}."
        q = lin(x, b+"attention.self.query").reshape(n, NH, -1).transpose(1, 0, 2)
        k = lin(x, b+"attention.self.key").reshape(n, NH, -1).transpose(1, 0, 2)
        v = lin(x, b+"attention.self.value").reshape(n, NH, -1).transpose(1, 0, 2)
        a = q @ k.transpose(0, 2, 1) / math.sqrt(H // NH)
        a = np.exp(a - a.max(-1, keepdims=True)); a /= a.sum(-1, keepdims=True)
        c = (a @ v).transpose(1, 0, 2).reshape(n, H)
        x = ln(lin(c, b+"attention.output.dense") + x, b+"attention.output.LayerNorm")
        h = lin(x, b+"intermediate.dense"); h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
        x = ln(lin(h, b+"output.dense") + x, b+"output.LayerNorm")
    m = x.mean(0)
    return m / np.linalg.norm(m)

pairs = [l.rstrip("\n").split("\t") for l in sys.stdin if l.strip()]
for a, b in pairs:
    print(f"{a}\t{b}\t{float(embed(a) @ embed(b)):.6f}")
