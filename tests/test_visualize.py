import numpy as np
import pytest

from ssd_jax import visualize


def test_boxes_are_drawn_where_they_are():
    image = np.zeros((100, 200, 3), np.uint8)
    drawn = visualize.draw_boxes(image, np.array([[20, 10, 120, 60]]), [3], thickness=1)
    colour = visualize.class_colour(3)
    assert (drawn[10, 20:121] == colour).all() and (drawn[60, 20:121] == colour).all()
    assert (drawn[10:61, 20] == colour).all() and (drawn[10:61, 120] == colour).all()
    assert not drawn[11:60, 21:120].any() and not image.any()  # inside untouched, input kept
    as_xyxy = visualize.draw_normalized_boxes(image, [[0.1, 0.1, 0.6, 0.6]], [3], thickness=1)
    as_cxcywh = visualize.draw_normalized_boxes(
        image, [[0.35, 0.35, 0.5, 0.5]], [3], box_format="cxcywh", thickness=1
    )
    np.testing.assert_array_equal(as_xyxy, as_cxcywh)
    assert (as_xyxy[10, 20:121] == colour).all()
    with pytest.raises(ValueError, match="box_format"):
        visualize.draw_normalized_boxes(image, [[0, 0, 1, 1]], [1], box_format="xywh")


def test_class_colours_differ_and_captions_are_drawn():
    colours = {visualize.class_colour(k) for k in range(1, 21)}
    assert len(colours) == 20
    image = np.zeros((100, 200, 3), np.uint8)
    plain = visualize.draw_boxes(image, np.array([[20, 40, 120, 90]]), [1])
    captioned = visualize.draw_boxes(image, np.array([[20, 40, 120, 90]]), [1], ["cat 0.90"])
    assert (captioned[:40] != plain[:40]).any()  # the label sits above the box


def test_image_grid_places_images_row_by_row():
    images = [np.full((10, 20, 3), k, np.uint8) for k in range(5)]
    grid = visualize.image_grid(images, columns=2, gap=3)
    assert grid.shape == (3 * 10 + 2 * 3, 2 * 20 + 3, 3)
    assert (grid[13:23, 23:43] == 3).all() and (grid[26:36, 0:20] == 4).all()
    assert (grid[26:36, 23:43] == 255).all()  # the empty cell stays white
    with pytest.raises(ValueError, match="image 1"):
        visualize.image_grid([images[0], np.zeros((5, 5, 3), np.uint8)], columns=2)


def test_labels_never_overlap_on_a_crowded_image():
    """Eight detections of one object (as an untrained model gives) and four boxes
    touching the top edge, where no label fits above: every label inside the image,
    no two labels sharing a pixel."""
    same_object = [(100, 100, 200, 200)] * 8
    at_the_top = [(0, 0, 70, 40), (60, 0, 130, 40), (120, 0, 190, 40), (180, 0, 250, 40)]
    boxes = np.array(same_object + at_the_top, np.float64)
    sizes = [(62, 18)] * len(boxes)
    placed = visualize.label_rectangles(boxes, sizes, (300, 300))
    for k, (x0, y0, x1, y1) in enumerate(placed):
        assert (x1 - x0, y1 - y0) == sizes[k]
        assert min(x0, y0) >= 0 and max(x1, y1) <= 300
        for other in placed[:k]:
            shared_w = min(x1, other[2]) - max(x0, other[0])
            shared_h = min(y1, other[3]) - max(y0, other[1])
            assert shared_w <= 0 or shared_h <= 0, (k, placed)
    assert placed[0] == (100, 82, 162, 100)  # the first (best) label: above its box
    assert placed[8][1] == 0  # no room above a box at the top edge: inside it
