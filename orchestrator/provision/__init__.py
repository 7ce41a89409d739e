"""Getting a model onto a host: a controller folder uploaded, or a hub download run on the host."""
