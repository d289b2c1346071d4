"""HTTP/1.1 adapters: a bytes.find-based head parser, a chunked decoder and two codecs.

h11 is the reference: the differential tests in tests/codec/test_h1_differential.py show
this parser accepts nothing h11 rejects.
"""
