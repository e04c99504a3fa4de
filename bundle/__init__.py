"""The model bundle's contract, shared by training, export and the server (numpy and Pillow only).

format      bundle.json: format id and version, required keys, checksums, the staged write
specs       graph roles, tensor keys and names, dtypes and shapes
preprocess  the one function from a decoded image to the encoder's input
decoding    greedy and beam search over a step function
sessions    the bundle's graphs as an encoder and a step function (names read from the manifest)
"""
