"""needle_nb.apps.figures: the one helper every figure is saved through (sizes for the docs column, PNG metadata)."""
import warnings

import pytest

matplotlib = pytest.importorskip('matplotlib')
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from needle_nb.apps import figures  # noqa: E402


def test_png_records_dpi_and_smallest_font():
    fig, ax = figures.subplots(1, 2)
    ax[0].plot([0, 1], label='a'); ax[0].set_title('title', fontsize=12); ax[0].legend(fontsize=8.5)
    png = figures.png_bytes(fig)
    meta = figures.png_metadata(png)
    assert meta[figures.META_DPI] == str(figures.DPI)
    assert float(meta[figures.META_FONT]) == 8.5   # the legend, smaller than the 9 pt ticks
    from PIL import Image
    import io
    width = Image.open(io.BytesIO(png)).size[0]
    assert width <= (figures.COLUMN_INCHES + 2 * 0.1) * figures.DPI   # the column plus savefig's 0.1 in padding
    plt.close(fig)


def test_small_text_and_wide_figures_are_refused():
    fig, ax = figures.subplots()
    ax.set_xlabel('tiny', fontsize=6)
    with pytest.raises(ValueError, match='6 pt is below'): figures.png_bytes(fig)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert figures.png_metadata(figures.png_bytes(fig, strict=False))[figures.META_FONT] == '6'
    assert caught and 'below' in str(caught[0].message)
    plt.close(fig)
    with pytest.raises(ValueError, match='in rows'): figures.subplots(1, 4, width=12)


def test_invisible_text_does_not_count():
    fig, ax = figures.subplots()
    ax.set_title('hidden', fontsize=4).set_visible(False)
    assert figures.smallest_font(fig) >= 9
    plt.close(fig)
