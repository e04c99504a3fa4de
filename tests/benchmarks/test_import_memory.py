"""benchmarks.import_memory: VGG16 (fc2, 138 M parameters), the encoder whose import the kernel killed
at 24 GB, imports end to end with random weights, and its peak is measured in a process of its own."""
import pytest

pytestmark = pytest.mark.slow

# The docs' target is 4 GB (measured 3.99-4.03 GB here); the bound leaves a tenth for other processors'
# allocators, and still fails loudly for what this guards against, tf2onnx keeping copies of the weights.
REGRESSION_BOUND_MB = 4500


def test_vgg16_imports_within_its_memory_bound(tmp_path):
    from benchmarks import import_memory

    results = {"machine": "test", "budget_mb": import_memory.BUDGET_MB, "encoders": import_memory.run(["vgg16"], tmp_path)}
    row = results["encoders"][0]
    assert row["imported"], row["last_line"]
    assert row["parameters"] == 138_357_544 and 1000 < row["peak_mb"] < REGRESSION_BOUND_MB
    assert f"**{row['peak_mb']} MB**" in import_memory.markdown(results)
