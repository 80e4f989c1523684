"""TLS reports others send about our own domains: the https endpoint and the Maildir reader."""
