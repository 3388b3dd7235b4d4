"""A hypothesis strategy shared by the decode-path property tests: valid images with random byte edits."""

from hypothesis import strategies as st


@st.composite
def mutated(draw, seeds: list[bytes], max_edits: int = 6, max_insert: int = 16) -> bytes:
    """One of ``seeds`` with 1..max_edits byte flips, truncations or insertions."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, max_edits))):
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = draw(st.integers(0, len(data)))
        if kind == "flip" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif kind == "cut":
            data = data[:pos]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=max_insert))
    return bytes(data)
