#!/usr/bin/env escript
%% -*- erlang -*-
%%! +Bd
%%
%% erlang-echo: the idiomatic Erlang echo server, a peer for benchmarking
%% edgeloop: gen_tcp, {packet, raw}, {nodelay, true}, {active, once}, one
%% process per connection.
%%
%% usage: escript erlang-echo.erl IP:PORT   (port 0 = pick a free port)
%%
%% +Bd: SIGINT stops the VM instead of opening the break menu; SIGTERM makes
%% the VM stop cleanly (exit 0). BEAM ignores SIGPIPE. Schedulers default to
%% one per core; pass ERL_FLAGS="+S 1" for a single-threaded comparison.
-mode(compile).

main([Addr]) ->
    {IP, Port} = parse(Addr),
    {ok, L} = gen_tcp:listen(Port, [binary, {packet, raw}, {active, false},
                                    {ip, IP}, {reuseaddr, true},
                                    {backlog, 1024}, {nodelay, true},
                                    %% on peer EOF keep the socket so what is
                                    %% owed is still written (half-close)
                                    {exit_on_close, false}]),
    {ok, {RIP, RPort}} = inet:sockname(L),
    io:format("listening on ~s:~B~n", [inet:ntoa(RIP), RPort]),
    accept(L);
main(_) ->
    io:format(standard_error, "usage: erlang-echo IP:PORT~n", []),
    halt(2).

parse(Addr) ->
    [PortS | Rev] = lists:reverse(string:split(Addr, ":", all)),
    {ok, IP} = inet:parse_ipv4_address(lists:flatten(lists:join(":", lists:reverse(Rev)))),
    {IP, list_to_integer(PortS)}.

accept(L) ->
    case gen_tcp:accept(L) of
        {ok, S} ->
            Pid = spawn(fun() -> receive go -> ok end, inet:setopts(S, [{active, once}]), loop(S) end),
            ok = gen_tcp:controlling_process(S, Pid),
            Pid ! go;
        {error, E} ->
            io:format(standard_error, "accept: ~p~n", [E])
    end,
    accept(L).

loop(S) ->
    receive
        {tcp, S, Data} ->
            case gen_tcp:send(S, Data) of
                ok ->
                    inet:setopts(S, [{active, once}]),
                    loop(S);
                {error, _} ->
                    gen_tcp:close(S)
            end;
        {tcp_closed, S} ->
            %% close/1 waits for queued output to be sent before closing
            gen_tcp:close(S);
        {tcp_error, S, _} ->
            gen_tcp:close(S)
    end.
