"""The course website: `make site` runs build.py (Sphinx with conf.py); test_site.py checks the result in a browser."""
