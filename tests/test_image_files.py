"""Reading image files (pdnsr.data.image_files): truncated and broken files are refused, good ones read as cv2 does.

The files are real encodings written by cv2 (and one real photo from ../shared/data, when present), cut the way an
interrupted download leaves them.
"""

from pathlib import Path

import cv2
import numpy as np
import pytest

from pdnsr.data.image_files import UnreadableImage, decode_image, image_size, read_bgr, read_rgb


def photo(h=120, w=160, seed=0):
    """Smooth colours plus noise, uint8 BGR: compresses like a photo, not like flat colour."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w, yy / h, (xx + yy) / (h + w)], axis=2) * 200
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def encoded(ext, img, params=()):
    ok, data = cv2.imencode(ext, img, list(params))
    assert ok
    return data.tobytes()


def cut_points(n_bytes, count=40):
    """Lengths from 10 bytes to one byte short of the whole file."""
    return sorted(set(np.linspace(10, n_bytes - 1, count).astype(int).tolist()))


ENCODINGS = {
    'baseline.jpg': ('.jpg', []),
    'progressive.jpg': ('.jpg', [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
    'restart_markers.jpg': ('.jpg', [cv2.IMWRITE_JPEG_RST_INTERVAL, 2]),
    'image.png': ('.png', []),
    'image.bmp': ('.bmp', []),
    'image.tif': ('.tif', []),
    'image.webp': ('.webp', []),
    'image.ppm': ('.ppm', []),
}


@pytest.mark.parametrize('name', sorted(ENCODINGS))
def test_every_truncation_is_refused(tmp_path, name):
    ext, params = ENCODINGS[name]
    img = photo()
    data = encoded(ext, img, params)
    path = tmp_path / name
    path.write_bytes(data)
    assert decode_image(path).shape[:2] == img.shape[:2]
    for size in cut_points(len(data)):
        path.write_bytes(data[:size])
        with pytest.raises(UnreadableImage, match=str(path)):
            decode_image(path)


def test_truncated_jpeg_that_cv2_reads_silently(tmp_path, shared_data):
    # A real photo cut to 60 %: cv2.imread returns it without an error, the missing rows flat grey.
    source = sorted((shared_data / 'train' / 'SunHays80').glob('*.jpg'))[0]
    path = tmp_path / source.name
    path.write_bytes(source.read_bytes()[: int(source.stat().st_size * 0.6)])
    with pytest.raises(UnreadableImage, match=r'is truncated or corrupt \(its JPEG data stops before the end marker'):
        read_bgr(path)
    with pytest.raises(ValueError, match=str(path)):  # inference and prompt-store building read through read_rgb
        read_rgb(path)
    assert image_size(path) is not None  # the header is intact: only the pixels are missing


def test_complete_jpeg_with_thumbnail_and_trailing_bytes(tmp_path):
    # A thumbnail (its own end marker) inside an APP1 segment must not make a cut main image look complete, and
    # bytes after the end marker (some cameras append data) must not make a complete one look cut.
    main = encoded('.jpg', photo())
    thumb = encoded('.jpg', photo(16, 16, seed=1))
    app1 = b'\xff\xe1' + (len(thumb) + 2).to_bytes(2, 'big') + thumb
    data = main[:2] + app1 + main[2:]
    path = tmp_path / 'camera.jpg'
    path.write_bytes(data + b'\xff\xda\x00\x04junk' * 20)
    np.testing.assert_array_equal(decode_image(path), cv2.imdecode(np.frombuffer(main, np.uint8), cv2.IMREAD_COLOR))
    for size in cut_points(len(data)):
        path.write_bytes(data[:size])
        with pytest.raises(UnreadableImage, match='truncated'):
            decode_image(path)


def test_read_bgr_same_pixels_as_cv2_grey_and_alpha(tmp_path):
    img = photo()
    cv2.imwrite(str(tmp_path / 'colour.jpg'), img)
    got, grey = read_bgr(tmp_path / 'colour.jpg')
    np.testing.assert_array_equal(got, cv2.imread(str(tmp_path / 'colour.jpg')))
    assert not grey and got.dtype == np.uint8

    cv2.imwrite(str(tmp_path / 'grey.png'), img[:, :, 1])
    got, grey = read_bgr(tmp_path / 'grey.png')
    assert grey and got.shape == img.shape
    np.testing.assert_array_equal(got, np.repeat(img[:, :, 1:2], 3, axis=2))

    rgba = np.dstack([img, np.full(img.shape[:2], 7, np.uint8)])
    cv2.imwrite(str(tmp_path / 'alpha.png'), rgba)
    got, grey = read_bgr(tmp_path / 'alpha.png')
    assert not grey
    np.testing.assert_array_equal(got, img)
    np.testing.assert_array_equal(read_rgb(tmp_path / 'alpha.png'), img[:, :, ::-1])
    assert image_size(tmp_path / 'alpha.png') == img.shape[:2]


def test_16_bit_refused_for_preparation_scaled_for_reading(tmp_path):
    img16 = photo().astype(np.uint16) * 257
    path = tmp_path / 'deep.png'
    cv2.imwrite(str(path), img16)
    with pytest.raises(ValueError, match=rf'image {path}: only 8-bit images are supported, got uint16'):
        read_bgr(path)
    np.testing.assert_array_equal(read_rgb(path), photo()[:, :, ::-1])


def test_missing_empty_and_not_an_image(tmp_path):
    with pytest.raises(UnreadableImage, match=r'cannot read image .*absent\.png: No such file'):
        read_rgb(tmp_path / 'absent.png')
    (tmp_path / 'empty.jpg').write_bytes(b'')
    with pytest.raises(UnreadableImage, match=r'empty\.jpg is empty'):
        read_bgr(tmp_path / 'empty.jpg')
    (tmp_path / 'text.png').write_text('not an image')
    with pytest.raises(UnreadableImage, match=r'cannot decode image .*text\.png'):
        decode_image(tmp_path / 'text.png')
    assert image_size(tmp_path / 'text.png') is None
    assert issubclass(UnreadableImage, ValueError) and Path(tmp_path / 'text.png').is_file()
