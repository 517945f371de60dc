"""HTTP: health, the JSON API, boot scripts and files (thin aiohttp handlers)."""
