from chatbot_llm.cli import main

main()
