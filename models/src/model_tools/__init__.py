"""Build and publish the models: train (iris_svc), zoo (the other examples and the
benchmark models), publish (a version directory to a bucket, optionally signed)."""
