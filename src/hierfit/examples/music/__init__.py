"""An artist's popularity from the popularity of their tracks (hierarchical regression).

Tracks are nested in artists, artists in (sub)genres; an artist with two tracks should not get
a confident extreme estimate. The example fits::

    track_popularity ~ <audio features, standardised> + (1 | playlist_genre/track_artist)

(and a variant with ``playlist_subgenre`` between genre and artist) with the ``mixed`` and
``pymc`` engines, ranks artists with intervals and shows the shrinkage of small artists.

Examples
--------
>>> from hierfit.examples.music import synthetic_catalogue
>>> cat = synthetic_catalogue(n_artists=40, seed=0)
>>> cat.synthetic, list(cat.data.columns[:4])
(True, ['track_id', 'track_name', 'track_artist', 'track_popularity'])
"""

from hierfit.examples.music.catalogue import (
    FEATURES,
    REQUIRED_COLUMNS,
    Catalogue,
    check_columns,
    clean_catalogue,
    load_spotify,
    standardise,
)
from hierfit.examples.music.synthetic import (
    CatalogueTruth,
    SyntheticCatalogue,
    synthetic_catalogue,
)

__all__ = [
    "FEATURES",
    "REQUIRED_COLUMNS",
    "Catalogue",
    "CatalogueTruth",
    "SyntheticCatalogue",
    "check_columns",
    "clean_catalogue",
    "load_spotify",
    "standardise",
    "synthetic_catalogue",
]
