module edgeloop/peers/go-chat

go 1.19
