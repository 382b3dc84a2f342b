"""An example third-party spactor plugin (see ``token_deletion``)."""
