"""Worked examples on data shaped like real users' data.

* :mod:`hierfit.examples.music` -- an artist's popularity from the popularity of their tracks
  (tracks nested in artists nested in genres), on the public Spotify songs table layout or on
  a clearly labelled synthetic catalogue in the same layout.
"""
