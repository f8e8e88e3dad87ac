"""importer: dropped CSV, Excel and JSON files to ServiceNow Import Sets, every row accounted for."""

__version__ = "0.1.0"
