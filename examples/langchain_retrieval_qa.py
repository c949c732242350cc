"""Retrieval QA with LangChain, twice: a stuff chain (retrieved passages pasted into the prompt)
and the same chain with e2llm (retrieved passages read as compressed soft prompts).

Runs offline: the document is the Python language reference that ships with CPython
(pydoc_data), the embeddings are E2LLMEmbeddings (e2llm's own encoder, all-MiniLM-L6-v2: the
vectors its hybrid reading ranks chunks with, so one model retrieves and reads), the vector
store is LangChain's InMemoryVectorStore, and both chains use e2llm's default decoder
(SmolLM2-135M-Instruct); every plugin object built from checkpoint="default" shares one
engine. The e2llm chain reads the shipped checkpoint's way: every passage compressed, plus the
raw text of the 3 chunks (across all passages) most similar to the question. Its answers come
from those raw chunks: the shipped soft prompts carry almost none of their chunk's content
(docs/results.md).

    PYTHONPATH=core:. python examples/langchain_retrieval_qa.py [--k 6] [--question "..."]
"""
from __future__ import annotations

import argparse
import time
from operator import itemgetter

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from pydoc_data.topics import topics

from e2llm_plugins.langchain import E2LLM, E2LLMEmbeddings, create_e2llm_documents_chain

TOPICS = ["with", "for", "while", "if", "try", "function", "class", "assignment", "augassign", "import", "lambda",
          "exceptions", "break", "continue", "return", "pass", "del", "global", "nonlocal", "raise", "assert", "yield"]
QUESTIONS = ["What does the with statement do?", "When does the else clause of a for loop run?"]


class UsageLog(BaseCallbackHandler):
    """Records what each model call read (generation_info from the e2llm LangChain plugin)."""

    def __init__(self):
        self.calls = []

    def on_llm_end(self, response, **kwargs):
        self.calls += [g[0].generation_info for g in response.generations]


def passages(text: str, max_chars: int = 900) -> list[str]:
    """Paragraph-aligned passages of at most about max_chars characters."""
    out, current = [], ""
    for para in text.split("\n\n"):
        if current and len(current) + len(para) > max_chars:
            out.append(current.strip())
            current = ""
        current += para + "\n\n"
    return out + ([current.strip()] if current.strip() else [])


def retrieval_chain(retriever, combine_docs_chain):
    """create_retrieval_chain when langchain-classic is installed, else the same LCEL runnable
    it builds from langchain-core alone: {"input"} -> + "context" (Documents) -> + "answer"."""
    try:
        from langchain_classic.chains import create_retrieval_chain

        return create_retrieval_chain(retriever, combine_docs_chain)
    except ImportError:
        return RunnablePassthrough.assign(context=itemgetter("input") | retriever).assign(answer=combine_docs_chain)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=6, help="passages to retrieve")
    parser.add_argument("--question", action="append", help="ask this instead (repeatable)")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    start = time.perf_counter()
    document = "\n\n".join(topics[t] for t in TOPICS if t in topics)
    docs = [Document(page_content=p, metadata={"passage": i}) for i, p in enumerate(passages(document))]
    store = InMemoryVectorStore.from_documents(docs, E2LLMEmbeddings(checkpoint="default"))  # loads the engine
    retriever = store.as_retriever(search_kwargs={"k": args.k})
    print(f"loaded the models and indexed {len(document):,} characters as {len(docs)} passages in {time.perf_counter() - start:.1f} s")

    # the stuff chain: the plain decoder reads the retrieved passages as ordinary tokens
    stuff_prompt = PromptTemplate.from_template("Answer from these passages of the Python reference.\n\n{context}\n\nQuestion: {input}")
    plain = E2LLM(checkpoint="default", max_tokens=args.max_tokens)  # no documents: the whole prompt is the question
    format_docs = RunnablePassthrough.assign(context=lambda x: "\n\n".join(d.page_content for d in x["context"]))
    stuff = retrieval_chain(retriever, format_docs | stuff_prompt | plain | StrOutputParser())
    # the same chain with e2llm: each retrieved passage compressed into its own soft prompts
    e2llm = retrieval_chain(retriever, create_e2llm_documents_chain(E2LLM(checkpoint="default", max_tokens=args.max_tokens)))

    for question in args.question or QUESTIONS:
        print(f"\nQ: {question}")
        for name, chain in (("stuff", stuff), ("e2llm", e2llm)):
            log = UsageLog()
            t0 = time.perf_counter()
            out = chain.invoke({"input": question}, config={"callbacks": [log]})
            info = log.calls[-1]
            print(f"  [{name:5}] {time.perf_counter() - t0:5.1f} s, decoder read {info['input_tokens']:5d} tokens "
                  f"({info['soft_tokens']} soft) from {len(out['context'])} passages: {out['answer'].strip()!r}")


if __name__ == "__main__":
    main()
