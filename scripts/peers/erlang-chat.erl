#!/usr/bin/env escript
%% -*- erlang -*-
%%! +Bd
%%
%% erlang-chat: a one-room chat server as an Erlang user would write it when
%% fan-out speed matters — a peer that scripts/chat-fanout.sh (PEERS=1)
%% measures edgeloop's chat against.
%%
%% usage: escript erlang-chat.erl IP:PORT   (port 0 = pick a free port)
%%
%% The design (the fast one, as RabbitMQ writes to sockets, not a process
%% and a message per member per line):
%% - One room process owns every socket ({active, N}: a message per read,
%%   re-armed on tcp_passive); an acceptor hands it each new socket.
%% - All the complete lines of one read, and of the other reads already in
%%   its mailbox (up to 64), are formatted once ("NICK: TEXT\n" each) into
%%   one binary, which goes to every member's port with
%%   erlang:port_command(Port, Bin, [nosuspend]): the inet driver's output
%%   queue is the member's pending buffer, and the driver writes everything
%%   queued with one writev when the socket is writable.
%% - Slow consumer: every socket has {high_watermark, 4 MiB}; a port whose
%%   queue passed it is busy, port_command ... [nosuspend] returns false, and
%%   the member is cut at once ({linger, {true, 0}}: queue discarded) and
%%   announced as left.
%%
%% The subset of edgeloop's chat protocol that scripts/chat/fanout.c uses:
%% "* guestN joined" to every member, the newcomer included (its first
%% line); every line ("\n" or "\r\n") as "guestN: TEXT" to every member, the
%% sender included, in one order for everyone; "* guestN left"; no "/"
%% commands. A partial line longer than 64 KiB cuts its sender.
%%
%% Edge cases: each port_command makes the driver send an {inet_reply, ...}
%% message back, which the room drops; a port already closed raises badarg,
%% taken as a cut. On a member's EOF ({exit_on_close, false}) it leaves and
%% a process of its own closes its socket once the queued output is sent.
%% +Bd: SIGTERM/SIGINT stop the VM. Schedulers default to one per core in
%% the CPU affinity (taskset -c 0 gives +S 1).
-mode(compile).

-define(MAX_OUTBUF, 4194304).
-define(MAX_LINE, 65536).
-define(ACTIVE, 32).
-define(DRAIN, 64).

main([Addr]) ->
    {IP, Port} = parse(Addr),
    {ok, L} = gen_tcp:listen(Port, [binary, {packet, raw}, {active, false},
                                    {ip, IP}, {reuseaddr, true},
                                    {backlog, 1024}, {nodelay, true},
                                    %% on a member's EOF keep the socket so
                                    %% what is owed is still written
                                    {exit_on_close, false},
                                    {high_watermark, ?MAX_OUTBUF},
                                    {low_watermark, ?MAX_OUTBUF div 2}]),
    {ok, {RIP, RPort}} = inet:sockname(L),
    io:format("listening on ~s:~B~n", [inet:ntoa(RIP), RPort]),
    Room = spawn(fun() -> room(#{}, [], 0) end),
    accept(L, Room);
main(_) ->
    io:format(standard_error, "usage: erlang-chat IP:PORT~n", []),
    halt(2).

parse(Addr) ->
    [PortS | Rev] = lists:reverse(string:split(Addr, ":", all)),
    {ok, IP} = inet:parse_ipv4_address(lists:flatten(lists:join(":", lists:reverse(Rev)))),
    {IP, list_to_integer(PortS)}.

accept(L, Room) ->
    case gen_tcp:accept(L) of
        {ok, S} ->
            ok = gen_tcp:controlling_process(S, Room),
            Room ! {join, S};
        {error, E} ->
            io:format(standard_error, "accept: ~p~n", [E])
    end,
    accept(L, Room).

%% Members: #{Port => {Nick, Prefix, Partial}}; Ports: the fan-out list.
room(Members, Ports, N) ->
    receive
        {inet_reply, _, _} ->
            room(Members, Ports, N);
        {tcp, S, Data} ->
            {M0, Acc, Long} = drain(S, Data, {Members, [], []}, ?DRAIN),
            {M1, P1} = case iolist_to_binary(Acc) of
                           <<>> -> {M0, Ports};
                           Batch -> fanout(Batch, M0, Ports)
                       end,
            {M2, P2} = cut(Long, M1, P1),
            room(M2, P2, N);
        {tcp_passive, S} ->
            _ = inet:setopts(S, [{active, ?ACTIVE}]),
            room(Members, Ports, N);
        {join, S} ->
            Nick = <<"guest", (integer_to_binary(N + 1))/binary>>,
            _ = inet:setopts(S, [{active, ?ACTIVE}]),
            M0 = Members#{S => {Nick, <<Nick/binary, ": ">>, <<>>}},
            {M1, P1} = fanout(<<"* ", Nick/binary, " joined\n">>, M0, [S | Ports]),
            room(M1, P1, N + 1);
        {tcp_closed, S} ->
            {M1, P1} = leave(S, Members, Ports, false),
            room(M1, P1, N);
        {tcp_error, S, _} ->
            {M1, P1} = leave(S, Members, Ports, true),
            room(M1, P1, N);
        _ ->
            room(Members, Ports, N)
    end.

%% Lines of one read appended to Acc (an iolist, formatted), then of every
%% other read already in the mailbox, up to Left of them: one fan-out for
%% all, as a Go or tokio writer sends all that is pending at once.
drain(S, Data, State, Left) ->
    State1 = lines(S, Data, State),
    receive
        {tcp, S2, Data2} when Left > 0 -> drain(S2, Data2, State1, Left - 1);
        {inet_reply, _, _} -> drain(none, <<>>, State1, Left);
        {tcp_passive, S2} when Left > 0 ->
            _ = inet:setopts(S2, [{active, ?ACTIVE}]),
            drain(none, <<>>, State1, Left - 1)
    after 0 -> State1
    end.

%% {Members, Acc, Long}: Acc the formatted lines (an iolist), Long the
%% senders whose partial line passed MAX_LINE (cut after the fan-out; what
%% they sent meanwhile is dropped).
lines(S, Data, {Members, _, Long} = State) ->
    case Members of
        #{S := {Nick, Prefix, Part}} ->
            case Long =/= [] andalso lists:member(S, Long) of
                true -> State;
                false -> split(S, Nick, Prefix, Part, Data, State)
            end;
        _ ->
            State
    end.

split(S, Nick, Prefix, Part, Data, {Members, Acc, Long}) ->
    Buf = case Part of <<>> -> Data; _ -> <<Part/binary, Data/binary>> end,
    case binary:split(Buf, <<"\n">>, [global]) of
        [Rest] when byte_size(Rest) > ?MAX_LINE ->
            {Members, Acc, [S | Long]};
        [Rest] ->
            {Members#{S := {Nick, Prefix, Rest}}, Acc, Long};
        Pieces ->
            {Lines, [Rest]} = lists:split(length(Pieces) - 1, Pieces),
            {Members#{S := {Nick, Prefix, Rest}},
             [Acc | [[Prefix, strip_cr(Line), $\n] || Line <- Lines]], Long}
    end.

%% Abort: now, the queue discarded. Otherwise close/1 waits until the queue
%% is sent, so a process of its own does it and the room carries on.
close(S, true) ->
    _ = inet:setopts(S, [{linger, {true, 0}}]),
    gen_tcp:close(S);
close(S, false) ->
    Closer = spawn(fun() -> receive go -> gen_tcp:close(S) end end),
    case gen_tcp:controlling_process(S, Closer) of
        ok -> Closer ! go;
        {error, _} -> exit(Closer, kill), gen_tcp:close(S)
    end.

strip_cr(Line) ->
    case byte_size(Line) of
        0 -> Line;
        Len ->
            case binary:at(Line, Len - 1) of
                $\r -> binary:part(Line, 0, Len - 1);
                _ -> Line
            end
    end.

%% Queue Bin on every member's port; cut those whose queue is past the limit.
fanout(Bin, Members, Ports) ->
    case [P || P <- Ports, not send(P, Bin)] of
        [] -> {Members, Ports};
        Busy -> cut(Busy, Members, Ports)
    end.

send(P, Bin) ->
    try erlang:port_command(P, Bin, [nosuspend])
    catch error:_ -> false
    end.

cut([], Members, Ports) ->
    {Members, Ports};
cut([S | More], Members, Ports) ->
    {M1, P1} = leave(S, Members, Ports, true),
    cut(More, M1, P1).

%% Take S out of the room, close it (Abort: discard its queue), announce it.
leave(S, Members, Ports, Abort) ->
    case maps:take(S, Members) of
        {{Nick, _, _}, M1} ->
            P1 = lists:delete(S, Ports),
            close(S, Abort),
            fanout(<<"* ", Nick/binary, " left\n">>, M1, P1);
        error ->
            {Members, Ports}
    end.
