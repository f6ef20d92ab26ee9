"""Import of vector databases that a Fabstir-style SDK stored on S5: formats, crypto, portal client."""
