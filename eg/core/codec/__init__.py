"""Protocol adapters: three server codecs and three client codecs on one message vocabulary."""
