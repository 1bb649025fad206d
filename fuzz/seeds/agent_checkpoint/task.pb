
t1name