module edgeloop/peers/go-echo

go 1.19
