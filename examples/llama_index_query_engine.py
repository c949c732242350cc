"""A LlamaIndex query engine, twice: LlamaIndex's default ("compact") synthesizer, which pastes
the retrieved nodes into the prompt, and E2LLMSynthesizer, which reads every retrieved node as
compressed soft prompts (each node its own chunk group).

Runs offline: the documents are topics of the Python language reference that ships with
CPython (pydoc_data), embedded with E2LLMEmbedding (e2llm's own encoder, all-MiniLM-L6-v2: the
vectors its hybrid reading ranks chunks with, so one model retrieves and reads). Both query
engines answer with e2llm's default decoder (SmolLM2-135M-Instruct): the default synthesizer
through E2LLMLLM, so Settings.llm is never needed; every plugin object built from
checkpoint="default" shares one engine. E2LLMSynthesizer reads the shipped
checkpoint's way: every node compressed, plus the raw text of the 3 chunks (across all nodes)
most similar to the question; its answers come from those raw chunks, since the shipped soft
prompts carry almost none of their chunk's content (docs/results.md).

    PYTHONPATH=core:. python examples/llama_index_query_engine.py [--k 6] [--question "..."]
"""
from __future__ import annotations

import argparse
import time

from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.node_parser import SentenceSplitter
from pydoc_data.topics import topics

from e2llm_plugins.llama_index import E2LLMLLM, E2LLMEmbedding, E2LLMSynthesizer

TOPICS = ["with", "for", "while", "if", "try", "function", "class", "assignment", "augassign", "import", "lambda",
          "exceptions", "break", "continue", "return", "pass", "del", "global", "nonlocal", "raise", "assert", "yield"]
QUESTIONS = ["What does the with statement do?", "When does the else clause of a for loop run?"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=6, help="nodes to retrieve")
    parser.add_argument("--question", action="append", help="ask this instead (repeatable)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    start = time.perf_counter()
    llm = E2LLMLLM(checkpoint="default", max_new_tokens=args.max_new_tokens)
    Settings.tokenizer = llm.tokenizer  # the splitter and the compact synthesizer count in the decoder's tokens, no tiktoken download
    embed_model = E2LLMEmbedding(checkpoint="default")  # the first embedding call loads the engine the others share
    documents = [Document(text=topics[t], metadata={"topic": t}) for t in TOPICS if t in topics]
    splitter = SentenceSplitter(chunk_size=200, chunk_overlap=0)
    index = VectorStoreIndex.from_documents(documents, embed_model=embed_model, transformations=[splitter])
    print(f"loaded the models and indexed {len(documents)} documents ({sum(len(d.text) for d in documents):,} characters) "
          f"as {len(index.docstore.docs)} nodes with E2LLMEmbedding in {time.perf_counter() - start:.1f} s")

    engines = {
        "compact": index.as_query_engine(llm=llm, similarity_top_k=args.k),  # LlamaIndex's default synthesizer
        "e2llm": index.as_query_engine(llm=llm, similarity_top_k=args.k, response_synthesizer=E2LLMSynthesizer(
            checkpoint="default", max_new_tokens=args.max_new_tokens, return_citations=True)),
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
